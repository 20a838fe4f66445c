"""Asks CloudWatch (moto on loopback) what KEDA's aws-cloudwatch scaler would ask.

Usage: cloudwatch_query.py ENDPOINT NAMESPACE METRIC STAT PERIOD DIM=VALUE...
Prints one JSON object: the GetMetricData values (newest first) and the
metric's dimensions as ListMetrics reports them.
"""
import datetime
import json
import sys

import boto3


def main() -> None:
    endpoint, namespace, metric, stat, period, *dims = sys.argv[1:]
    dimensions = [dict(zip(("Name", "Value"), d.split("=", 1))) for d in dims]
    cw = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    now = datetime.datetime.now(datetime.timezone.utc)
    # KEDA: one MetricStat query over [now - metricCollectionTime, now].
    resp = cw.get_metric_data(
        MetricDataQueries=[{
            "Id": "c1",
            "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": dimensions},
                "Period": int(period),
                "Stat": stat,
            },
            "ReturnData": True,
        }],
        StartTime=now - datetime.timedelta(seconds=2 * int(period)),
        EndTime=now + datetime.timedelta(seconds=int(period)),
        ScanBy="TimestampDescending",
    )
    listed = cw.list_metrics(Namespace=namespace, MetricName=metric)["Metrics"]
    print(json.dumps({
        "values": resp["MetricDataResults"][0]["Values"],
        "dimensions": [m["Dimensions"] for m in listed],
    }))


if __name__ == "__main__":
    main()
