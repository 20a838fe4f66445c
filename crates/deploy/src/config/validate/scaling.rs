//! A pool's KEDA trigger, from its own `[pools.scaling]` or the top-level
//! `[scaling]` default.

use super::Problems;
use crate::config::input::RawScaling;
use crate::config::syntax::{is_arn, is_aws_region, is_http_url};
use crate::config::{CloudWatchPublish, PrometheusSignal, ScalingTrigger};

pub(super) fn validate_trigger(
    s: &RawScaling,
    field: &str,
    p: &mut Problems,
) -> Option<ScalingTrigger> {
    match s.trigger.as_deref() {
        Some("prometheus") => {
            for (key, set) in [
                ("region", s.region.is_some()),
                ("role_arn", s.role_arn.is_some()),
                ("stat_period_secs", s.stat_period_secs.is_some()),
                ("collection_time_secs", s.collection_time_secs.is_some()),
                ("publish", s.publish.is_some()),
            ] {
                if set {
                    p.add(format!(
                        "{field}.{key} applies only to trigger = \"cloudwatch\""
                    ));
                }
            }
            let addr = s.server_address.clone();
            match &addr {
                None => p.add(format!(
                    "{field}.server_address is required for trigger = \"prometheus\""
                )),
                Some(a) if !is_http_url(a) => p.add(format!(
                    "{field}.server_address {a:?} must be an http:// or https:// URL"
                )),
                Some(_) => {}
            }
            let signal = match s.signal.as_deref() {
                None | Some("backlog-seconds") => PrometheusSignal::BacklogSeconds,
                Some("queue-depth") => PrometheusSignal::QueueDepth,
                Some(other) => {
                    p.add(format!(
                        "{field}.signal {other:?} is unknown; allowed: backlog-seconds, queue-depth"
                    ));
                    PrometheusSignal::BacklogSeconds
                }
            };
            Some(ScalingTrigger::Prometheus {
                server_address: addr?,
                signal,
            })
        }
        Some("cloudwatch") => {
            for (key, set) in [
                ("server_address", s.server_address.is_some()),
                ("signal", s.signal.is_some()),
            ] {
                if set {
                    p.add(format!(
                        "{field}.{key} applies only to trigger = \"prometheus\""
                    ));
                }
            }
            let region = s.region.clone();
            match &region {
                None => p.add(format!(
                    "{field}.region is required for trigger = \"cloudwatch\""
                )),
                Some(r) if !is_aws_region(r) => {
                    p.add(format!("{field}.region {r:?} is not an AWS region"))
                }
                Some(_) => {}
            }
            if let Some(arn) = &s.role_arn
                && !is_arn(arn, "iam", "role/")
            {
                p.add(format!(
                    "{field}.role_arn {arn:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
                ));
            }
            // One-minute periods read over the last two minutes: KEDA ends
            // the window at the last complete period and takes its newest
            // datapoint, so a minute that has not arrived yet falls back to
            // the one before instead of to minMetricValue.
            let period = s.stat_period_secs.unwrap_or(60);
            let collection = s.collection_time_secs.unwrap_or(2 * period);
            if let Err(e) = crate::keda::check_metric_stat_period(period) {
                p.add(format!("{field}.stat_period_secs: {e}"));
            } else if period % 60 != 0 {
                // The servers publish standard-resolution datapoints, which
                // CloudWatch keeps per minute.
                p.add(format!(
                    "{field}.stat_period_secs ({period}) must be a multiple of 60: the servers publish one-minute (standard resolution) datapoints"
                ));
            } else if let Err(e) = crate::keda::check_collection_time(collection, period) {
                p.add(format!("{field}.collection_time_secs: {e}"));
            }
            let publish = match s.publish.as_deref() {
                None | Some("api") => CloudWatchPublish::Api,
                Some("emf") => CloudWatchPublish::Emf,
                Some(other) => {
                    p.add(format!(
                        "{field}.publish {other:?} is unknown; allowed: api, emf"
                    ));
                    CloudWatchPublish::Api
                }
            };
            Some(ScalingTrigger::CloudWatch {
                region: region?,
                role_arn: s.role_arn.clone(),
                stat_period_secs: period.clamp(1, i64::from(u32::MAX)) as u32,
                collection_time_secs: collection.clamp(0, i64::from(u32::MAX)) as u32,
                publish,
            })
        }
        None => {
            p.add(format!(
                "{field}.trigger is required; allowed: prometheus, cloudwatch"
            ));
            None
        }
        Some(other) => {
            p.add(format!(
                "{field}.trigger {other:?} is unknown; allowed: prometheus, cloudwatch"
            ));
            None
        }
    }
}
