//! The status page (`GET /`): a [`Snapshot`] as one HTML page a person
//! reads at a glance. No script: the charts are inline SVG drawn here, and
//! the page reloads itself every few seconds. Every text that comes from a
//! plugin or a file (names, errors) is escaped.

use std::fmt::Write as _;

use super::snapshot::{Second, Snapshot, ago};

/// How often the page reloads itself, in seconds.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00;font-weight:bold}.ok{color:#070}.muted{color:#777}\
svg{background:#fafafa;border:1px solid #ddd}figure{display:inline-block;margin:0 1.5em 0 0}";

pub fn render(snapshot: &Snapshot) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>plugboard</title><style>{STYLE}</style></head><body>"
    );
    header(&mut page, snapshot);
    charts(&mut page, &snapshot.history);
    plugins(&mut page, snapshot);
    schedules(&mut page, snapshot);
    events(&mut page, snapshot);
    page.push_str(
        "<p class=\"muted\">The same data: <a href=\"/status.json\">/status.json</a>; \
         Prometheus: <a href=\"/metrics\">/metrics</a>; health: <a href=\"/healthz\">/healthz</a>.</p>\
         </body></html>",
    );
    page
}

fn header(page: &mut String, s: &Snapshot) {
    let state = match s.state {
        "ready" => "<span class=\"ok\">ready</span>",
        "starting" => "<span class=\"bad\">starting</span>",
        _ => "<span class=\"bad\">stopping</span>",
    };
    let listen = s.listen.as_deref().map_or_else(String::new, |listen| {
        format!(
            " on {}{}",
            escape(listen),
            if s.tls { " (TLS)" } else { "" }
        )
    });
    let _ = write!(
        page,
        "<h1>plugboard {version}</h1><p id=\"summary\">{state}{listen}, up {uptime}; \
         <b>{open}</b> of {max} connections open; <b>{rate:.0}</b> commands/s",
        version = escape(s.version),
        uptime = uptime(s.uptime_secs),
        open = s.connections.open,
        max = s.connections.max,
        rate = s.commands_per_sec,
    );
    for (what, counts) in [
        ("refused", &s.connections.refused),
        ("closed", &s.connections.closed),
    ] {
        let nonzero: Vec<String> = counts
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(reason, count)| format!("{count} {}", escape(reason)))
            .collect();
        if !nonzero.is_empty() {
            let _ = write!(page, "; {what}: {}", nonzero.join(", "));
        }
    }
    page.push_str("</p>");
}

fn charts(page: &mut String, history: &[Second]) {
    page.push_str("<h2>The last five minutes</h2>");
    let commands: Vec<f64> = history.iter().map(|s| s.commands).collect();
    let failures: Vec<f64> = history.iter().map(|s| s.failures).collect();
    chart(page, "commands/s", &commands, "#2a6");
    chart(page, "failures/s", &failures, "#c33");
}

/// One series as a line over a fixed-size box, one point per second.
fn chart(page: &mut String, title: &str, points: &[f64], color: &str) {
    const WIDTH: f64 = 300.0;
    const HEIGHT: f64 = 60.0;
    let max = points.iter().copied().fold(0.0, f64::max);
    let scale = if max > 0.0 { HEIGHT / max } else { 0.0 };
    let step = WIDTH / (super::history::KEPT_SECS as f64);
    let offset = WIDTH - step * points.len() as f64;
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let x = offset + step * i as f64;
            format!("{x:.1},{:.1}", HEIGHT - value * scale)
        })
        .collect();
    let _ = write!(
        page,
        "<figure><svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"{title}\"><polyline fill=\"none\" stroke=\"{color}\" \
         stroke-width=\"1.5\" points=\"{}\"/></svg><figcaption>{title}, peak {max:.0}</figcaption></figure>",
        line.join(" ")
    );
}

fn plugins(page: &mut String, s: &Snapshot) {
    page.push_str(
        "<h2>Plugins</h2><table id=\"plugins\"><tr><th>plugin</th><th>file</th><th>version</th>\
         <th>commands</th><th>state</th><th class=\"num\">commands/s</th>\
         <th class=\"num\">failed (1 min)</th><th class=\"num\">p99 (1 min)</th>\
         <th class=\"num\">commands</th><th class=\"num\">memory</th><th class=\"num\">state kept</th></tr>",
    );
    if s.plugins.is_empty() {
        page.push_str("<tr><td colspan=\"11\" class=\"muted\">none serving</td></tr>");
    }
    for plugin in &s.plugins {
        let state = if plugin.quarantined {
            "<span class=\"bad\">quarantined</span>"
        } else {
            "<span class=\"ok\">serving</span>"
        };
        let share = plugin.failure_share.map_or("-".into(), |share| {
            let class = if share > 0.0 { " class=\"bad\"" } else { "" };
            format!("<span{class}>{:.1} %</span>", share * 100.0)
        });
        let p99 = plugin.p99_ms.map_or("-".into(), |ms| match ms.is_finite() {
            true => format!("&le; {ms:.2} ms"),
            false => "&gt; 10 s".into(),
        });
        let _ = write!(
            page,
            "<tr class=\"plugin\"><td><b>{name}</b></td><td>{file}</td><td><code>{version}</code></td>\
             <td class=\"commands\">{commands}</td><td>{state}</td><td class=\"num\">{rate:.1}</td>\
             <td class=\"num\">{share}</td><td class=\"num\">{p99}</td><td class=\"num\">{total}</td>\
             <td class=\"num\">{memory}</td><td class=\"num kv\">{kv}</td></tr>",
            name = escape(&plugin.name),
            file = escape(&plugin.file),
            version = match &plugin.trial {
                Some(trial) => format!(
                    "{}</code><br>trying <code>{}</code> on {}%: {} of {} calls failed",
                    escape(&plugin.version),
                    escape(&trial.version),
                    trial.percent,
                    trial.failures,
                    trial.calls
                ),
                None => escape(&plugin.version),
            },
            commands = escape(&plugin.commands.join(" ")),
            rate = plugin.commands_per_sec,
            total = plugin.commands_total,
            memory = mib(plugin.memory_bytes),
            kv = match (plugin.kv_keys, plugin.kv_bytes) {
                (Some(keys), Some(bytes)) => format!("{keys} keys, {}", size(bytes)),
                _ => "-".into(),
            },
        );
    }
    page.push_str("</table>");
}

fn schedules(page: &mut String, s: &Snapshot) {
    if s.schedules.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Schedules</h2><table id=\"schedules\"><tr><th>schedule</th><th>when</th>\
         <th>next run</th><th>last run</th></tr>",
    );
    for schedule in &s.schedules {
        let zone = schedule
            .timezone
            .as_deref()
            .map(|zone| format!(" ({})", escape(zone)))
            .unwrap_or_default();
        let last = match (&schedule.last, schedule.last_outcome) {
            (Some(at), Some(outcome)) => {
                let class = if outcome == "ok" { "ok" } else { "bad" };
                format!("<span class=\"{class}\">{outcome}</span> at {}", escape(at))
            }
            _ => "<span class=\"muted\">never</span>".into(),
        };
        let _ = write!(
            page,
            "<tr class=\"schedule\"><td><b>{name}</b></td><td><code>{cron}</code>{zone}</td>\
             <td>{next}</td><td>{last}</td></tr>",
            name = escape(&schedule.name),
            cron = escape(&schedule.cron),
            next = schedule.next.as_deref().map_or("-".into(), escape),
        );
    }
    page.push_str("</table>");
}

fn events(page: &mut String, s: &Snapshot) {
    page.push_str("<h2>Recent events</h2><table id=\"events\"><tr><th>time (UTC)</th><th></th><th>event</th><th>plugin</th><th>detail</th></tr>");
    if s.events.is_empty() {
        page.push_str("<tr><td colspan=\"5\" class=\"muted\">none yet</td></tr>");
    }
    for event in &s.events {
        let class = match event.kind {
            "rejected" | "quarantined" => " class=\"bad\"",
            _ => "",
        };
        let _ = write!(
            page,
            "<tr class=\"event\"><td>{time}</td><td class=\"muted\">{ago}</td><td{class}>{kind}</td>\
             <td>{plugin}</td><td>{detail}</td></tr>",
            time = event.time,
            ago = ago(event.unix_ms),
            kind = event.kind,
            plugin = escape(&event.plugin),
            detail = escape(&event.detail),
        );
    }
    page.push_str("</table>");
}

fn uptime(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

fn mib(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        _ => format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => mib(bytes),
    }
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_plugins_and_files_is_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }
}
