//! `GET /`: the landing page, linking to every other page.

use super::App;

pub(super) fn landing_page(app: &App) -> String {
    format!(
        r#"<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Load Impact Exporter</title></head>
<body>
<h1>Load Impact Exporter</h1>
<p>Version {version} (revision {revision}). Receives Load Impact webhooks at <code>POST {webhook}</code>.</p>
<ul>
<li><a href="{metrics}">Metrics</a></li>
<li><a href="/api/v1/runs">Runs</a> (running and recent, JSON)</li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li>
</ul>
</body>
</html>
"#,
        version = crate::version::VERSION,
        revision = crate::version::REVISION,
        webhook = html_escape(&app.webhook_path),
        metrics = html_escape(&app.telemetry_path),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
