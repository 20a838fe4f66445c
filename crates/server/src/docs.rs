//! The OpenAPI document, generated from the handler and body types, and a
//! self-contained `/docs` page that renders it (no CDN assets).

use axum::Json;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use utoipa::OpenApi;

use crate::AppState;
use crate::{a1111, error, generate, health, jobs, openai};

#[derive(OpenApi)]
#[openapi(
    info(title = "anyaccel", description = "Hardware-agnostic Stable Diffusion inference"),
    paths(
        openai::generations, openai::edits,
        jobs::submit, jobs::status, jobs::cancel, jobs::events,
        a1111::txt2img, a1111::img2img, a1111::progress, a1111::interrupt, a1111::samplers, a1111::sd_models,
        health::live, health::ready, health::info, health::metrics,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, generate::Provenance, generate::TimingReport,
        openai::GenerationBody, openai::ImagesResponse, openai::ImageData, openai::EditForm,
        openai::ResponseFormat, openai::ImageFormat,
        jobs::JobBody, jobs::JobView, jobs::Progress, jobs::JobResultBody, jobs::JobImage, jobs::JobErrorBody,
        a1111::A1111Body, a1111::A1111Response, a1111::ProgressResponse, a1111::ProgressState, a1111::Sampler, a1111::SdModel,
        health::Health, health::Info, health::SizeCost, health::InfoLimits, health::InfoDefaults, health::InfoMemory,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "openai", description = "OpenAI Images API"),
        (name = "jobs", description = "Native asynchronous jobs with server-sent events"),
        (name = "a1111", description = "AUTOMATIC1111 API subset"),
        (name = "health", description = "Probes, information and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>anyaccel API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ddd;margin-top:2rem} .op{margin:1rem 0;padding:.5rem 1rem;border-left:4px solid #4a7}
.m{font-weight:bold;text-transform:uppercase;margin-right:.5rem} code,pre{background:#f4f4f4;padding:.1rem .3rem}
pre{padding:.5rem;overflow:auto;font-size:13px}
</style></head><body>
<h1>anyaccel API</h1>
<p>The machine-readable document is at <a href="/openapi.json">/openapi.json</a>. Authenticated deployments expect
<code>Authorization: Bearer &lt;key&gt;</code> on <code>/v1</code> and <code>/sdapi</code>.</p>
<div id="ops">Loading…</div>
<script>
fetch('/openapi.json').then(r=>r.json()).then(doc=>{
  const root=document.getElementById('ops'); root.textContent='';
  const schemas=(doc.components||{}).schemas||{};
  const byTag={};
  for(const [path,ops] of Object.entries(doc.paths)) for(const [m,op] of Object.entries(ops)){
    const t=(op.tags||['other'])[0]; (byTag[t]=byTag[t]||[]).push([m,path,op]);
  }
  for(const [tag,ops] of Object.entries(byTag)){
    const h=document.createElement('h2'); h.textContent=tag; root.appendChild(h);
    for(const [m,path,op] of ops){
      const d=document.createElement('div'); d.className='op';
      const title=document.createElement('div');
      const ms=document.createElement('span'); ms.className='m'; ms.textContent=m;
      const ps=document.createElement('code'); ps.textContent=path;
      title.append(ms,ps); d.appendChild(title);
      const p=document.createElement('p'); p.textContent=op.summary||op.description||''; d.appendChild(p);
      const body=op.requestBody&&Object.values(op.requestBody.content||{})[0];
      const ref=body&&body.schema&&body.schema.$ref;
      if(ref){const pre=document.createElement('pre'); pre.textContent=JSON.stringify(schemas[ref.split('/').pop()],null,1); d.appendChild(pre);}
      const codes=document.createElement('p'); codes.textContent='Responses: '+Object.keys(op.responses||{}).join(', '); d.appendChild(codes);
      root.appendChild(d);
    }
  }
});
</script></body></html>"#;
