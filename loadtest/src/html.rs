//! The HTML report: one self-contained file (inline CSS and SVG, no script, no external
//! resource), readable offline and safe to attach to a release. Charts: latency over time
//! with the faults marked, answers by serving region and fallback over time, and new
//! sessions per edge; then the tables of figures and the invariants.

use std::fmt::Write as _;

use crate::report::Report;

const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const W: f64 = 920.0;
const H: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 62.0;
const BOTTOM: f64 = 34.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    values: &'a [f64],
    dashed: bool,
}

struct Marker {
    at_s: f64,
    label: String,
    color: &'static str,
    dashed: bool,
}

fn line_chart(
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    markers: &[Marker],
    bands: &[(f64, f64, String)],
) -> String {
    let n = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0f64, f64::max);
    let y_max = nice_max(max);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |i: f64| LEFT + pw * i / (n - 1) as f64;
    let y = |v: f64| TOP + ph * (1.0 - v / y_max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><text x="{LEFT}" y="16" class="title">{t}</text>"#,
        t = esc(title)
    );
    // Phases: alternating bands named at the top of the plot.
    for (i, (from, to, name)) in bands.iter().enumerate() {
        let x0 = x(from.min((n - 1) as f64));
        let x1 = x(to.min((n - 1) as f64));
        if i % 2 == 1 {
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{ph}" fill="#f3f3f3"/>"##,
                w = (x1 - x0).max(0.0)
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{tx:.1}" y="{ty}" class="tick" text-anchor="middle">{l}</text>"##,
            tx = (x0 + x1) / 2.0,
            ty = TOP - 4.0,
            l = esc(name)
        );
    }
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{v}</text>"##,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = yy + 4.0,
            v = fmt_num(v)
        );
    }
    let step = ((n as f64 / 10.0).ceil() as usize).max(1);
    for i in (0..n).step_by(step) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">{i}s</text>"#,
            x(i as f64),
            H - BOTTOM + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{:.1}" class="tick" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(unit)
    );
    for (i, m) in markers.iter().enumerate() {
        let mx = x(m.at_s.min((n - 1) as f64));
        let row = TOP + 12.0 + 12.0 * (i % 3) as f64;
        let _ = write!(
            svg,
            r#"<line x1="{mx:.1}" x2="{mx:.1}" y1="{TOP}" y2="{yb}" stroke="{c}" stroke-width="1.5"{d}/><text x="{tx:.1}" y="{ty}" class="marker" fill="{c}">{l}</text>"#,
            yb = H - BOTTOM,
            c = m.color,
            d = if m.dashed {
                r#" stroke-dasharray="4 3""#
            } else {
                ""
            },
            tx = mx + 3.0,
            ty = row,
            l = esc(&m.label)
        );
    }
    for s in series {
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i as f64), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{} points="{}"/>"#,
            s.color,
            if s.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            },
            points.join(" ")
        );
    }
    // Legend.
    let mut lx = LEFT;
    for s in series.iter().filter(|s| !s.name.is_empty()) {
        let _ = write!(
            svg,
            r#"<line x1="{lx}" x2="{x2}" y1="30" y2="30" stroke="{c}" stroke-width="3"{d}/><text x="{tx}" y="34" class="tick">{name}</text>"#,
            x2 = lx + 16.0,
            c = s.color,
            d = if s.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            },
            tx = lx + 20.0,
            name = esc(s.name)
        );
        lx += 28.0 + 7.0 * s.name.len() as f64;
    }
    svg.push_str("</svg>");
    svg
}

fn bar_chart(title: &str, bars: &[(String, String, u64)]) -> String {
    let row = 18.0;
    let top = 28.0;
    let height = top + row * bars.len() as f64 + 12.0;
    let label_w = 210.0;
    let pw = W - label_w - RIGHT - 50.0;
    let max = bars.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64;
    let regions: Vec<&str> = {
        let mut r: Vec<&str> = bars.iter().map(|b| b.1.as_str()).collect();
        r.dedup();
        r
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" aria-label="{t}"><text x="{LEFT}" y="16" class="title">{t}</text>"#,
        t = esc(title)
    );
    for (i, (edge, region, n)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let color = PALETTE[regions.iter().position(|r| r == region).unwrap_or(0) % PALETTE.len()];
        let w = pw * *n as f64 / max;
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty:.1}" class="tick" text-anchor="end">{e} ({r})</text><rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="{bh}" fill="{color}"/><text x="{nx:.1}" y="{ty:.1}" class="tick">{n}</text>"#,
            lx = label_w - 6.0,
            ty = y + 12.0,
            e = esc(edge),
            r = esc(region),
            bh = row - 4.0,
            nx = label_w + w + 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fault_markers(report: &Report) -> Vec<Marker> {
    let mut markers = Vec::new();
    for f in &report.faults {
        markers.push(Marker {
            at_s: f.fault.at_ms as f64 / 1000.0,
            label: f.fault.kind.to_string(),
            color: "#d62728",
            dashed: false,
        });
        if let Some(h) = f.fault.healed_ms {
            markers.push(Marker {
                at_s: h as f64 / 1000.0,
                label: String::new(),
                color: "#2ca02c",
                dashed: true,
            });
        }
    }
    markers
}

/// The report as one HTML page.
pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let status = if report.ok { "passed" } else { "FAILED" };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Locus loadtest: {s} ({status})</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:22px 0 6px}}
table{{border-collapse:collapse;margin:6px 0}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f4f4f4}} td:first-child,th:first-child{{text-align:left}}
.ok{{color:#1a7f37;font-weight:600}} .fail{{color:#c62828;font-weight:600}}
.title{{font:600 13px system-ui,sans-serif}} .tick{{font:11px system-ui,sans-serif;fill:#555}} .marker{{font:11px system-ui,sans-serif}}
.figs{{display:flex;flex-wrap:wrap;gap:10px}} .fig{{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}}
.fig b{{display:block;font-size:20px}} small{{color:#666}}
</style></head><body>"#,
        s = esc(&report.scenario)
    );
    let _ = write!(
        h,
        r#"<h1>Locus loadtest: {s} <span class="{c}">{status}</span></h1><small>{d:.1} s · {l} locator(s) · {e} edges · {cl} clients · {a} client addresses from {src} · database: {db}</small>"#,
        s = esc(&report.scenario),
        c = if report.ok { "ok" } else { "fail" },
        d = report.duration_s,
        l = report.target.locators.len(),
        e = report.target.edges.len(),
        cl = report.target.clients,
        a = report.target.addresses,
        src = esc(&report.target.address_source),
        db = esc(&report.target.database),
    );
    let all = report.latency_ms.get("all").cloned().unwrap_or_default();
    let _ = write!(
        h,
        r#"<div class="figs" style="margin-top:12px"><div class="fig">requests/s<b>{:.1}</b></div><div class="fig">p50 / p99 ms<b>{:.2} / {:.2}</b></div><div class="fig">p99.9 ms<b>{:.2}</b></div><div class="fig">fallback<b>{:.1}%</b></div><div class="fig">sessions lost<b>{}</b></div><div class="fig">audit lost / dup<b>{} / {}</b></div><div class="fig">messages delivered<b>{} / {}</b></div></div>"#,
        report.requests.per_s,
        all.p50,
        all.p99,
        all.p999,
        report.fallback.share * 100.0,
        report.sessions.lost,
        report.audit.lost_joined + report.audit.lost_left,
        report.audit.duplicated_joined + report.audit.duplicated_left,
        report.messages.delivered,
        report.messages.expected,
    );

    // Charts.
    let t = &report.timeline;
    let markers = fault_markers(report);
    h.push_str("<h2>Latency of the locator's answers</h2>");
    let bands: Vec<(f64, f64, String)> = report
        .phases
        .iter()
        .map(|p| {
            (
                p.start_ms as f64 / 1000.0,
                p.end_ms as f64 / 1000.0,
                p.name.to_string(),
            )
        })
        .collect();
    h.push_str(&line_chart(
        "answer latency per second (p50, p99); faults in red, healed in dashed green",
        "ms",
        &[
            Series {
                name: "p50",
                color: PALETTE[0],
                values: &t.p50_ms,
                dashed: false,
            },
            Series {
                name: "p99",
                color: PALETTE[1],
                values: &t.p99_ms,
                dashed: false,
            },
        ],
        &markers,
        &bands,
    ));
    h.push_str("<h2>Answers by serving region, and fallback</h2>");
    let region_values: Vec<(String, Vec<f64>)> = t
        .by_region
        .iter()
        .map(|(r, v)| (r.clone(), v.iter().map(|&x| x as f64).collect()))
        .collect();
    let fallback: Vec<f64> = t.fallback.iter().map(|&x| x as f64).collect();
    let errors: Vec<f64> = t.errors.iter().map(|&x| x as f64).collect();
    let mut series: Vec<Series<'_>> = region_values
        .iter()
        .enumerate()
        .map(|(i, (r, v))| Series {
            name: r,
            color: PALETTE[i % PALETTE.len()],
            values: v,
            dashed: false,
        })
        .collect();
    series.push(Series {
        name: "fallback",
        color: "#000000",
        values: &fallback,
        dashed: true,
    });
    series.push(Series {
        name: "errors",
        color: "#d62728",
        values: &errors,
        dashed: true,
    });
    h.push_str(&line_chart(
        "successful answers per second by serving region; fallback answers and client errors",
        "answers/s",
        &series,
        &markers,
        &bands,
    ));
    if !t.sessions_by_edge.is_empty() {
        h.push_str("<h2>Sessions per edge over time</h2>");
        let mut regions: Vec<&str> = t.edge_regions.values().map(String::as_str).collect();
        regions.sort_unstable();
        regions.dedup();
        let values: Vec<(String, &str, Vec<f64>)> = t
            .sessions_by_edge
            .iter()
            .map(|(edge, v)| {
                let region = t.edge_regions.get(edge).map_or("", String::as_str);
                (edge.clone(), region, v.iter().map(|&x| x as f64).collect())
            })
            .collect();
        let mut named: Vec<&str> = Vec::new();
        let series: Vec<Series<'_>> = values
            .iter()
            .map(|(_, region, v)| {
                let i = regions.iter().position(|r| r == region).unwrap_or(0);
                // One legend entry per region (its first edge).
                let name = if named.contains(region) {
                    ""
                } else {
                    named.push(region);
                    region
                };
                Series {
                    name,
                    color: PALETTE[i % PALETTE.len()],
                    values: v,
                    dashed: false,
                }
            })
            .collect();
        h.push_str(&line_chart(
            "sessions each edge reports to the locator (one line per edge, coloured by region)",
            "sessions",
            &series,
            &markers,
            &bands,
        ));
    }
    h.push_str("<h2>New sessions per edge</h2>");
    let mut bars: Vec<(String, String, u64)> = report
        .sessions_per_edge
        .iter()
        .map(|(edge, n)| {
            let region = report
                .target
                .edges
                .iter()
                .find(|(id, _)| id == edge)
                .map_or_else(String::new, |(_, r)| r.clone());
            (edge.clone(), region, *n)
        })
        .collect();
    bars.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    h.push_str(&bar_chart(
        "sessions created on each edge (creates and burst)",
        &bars,
    ));

    // Tables.
    h.push_str("<h2>Invariants</h2><table><tr><th>invariant</th><th>result</th><th style=\"text-align:left\">detail</th></tr>");
    for i in &report.invariants {
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td class="{}">{}</td><td style="text-align:left">{}</td></tr>"#,
            esc(&i.name),
            if i.ok { "ok" } else { "fail" },
            if i.ok { "ok" } else { "FAIL" },
            esc(&i.detail)
        );
    }
    h.push_str("</table>");
    h.push_str("<h2>Latency (ms)</h2><table><tr><th>request</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (op, p) in &report.latency_ms {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(op),
            p.count,
            p.p50,
            p.p90,
            p.p99,
            p.p999,
            p.max
        );
    }
    h.push_str("</table>");
    if !report.faults.is_empty() {
        h.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>at s</th><th>healed s</th><th>detected after ms</th><th>avoided after ms</th><th>out ms</th><th>bound ms</th><th>answers to dead edges</th><th>false disruptions</th><th>rooms disrupted</th><th>slowest room back ms</th><th style=\"text-align:left\">action</th></tr>");
        for f in &report.faults {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style="text-align:left">{}</td></tr>"#,
                esc(f.fault.kind),
                f.fault.at_ms as f64 / 1000.0,
                f.fault
                    .healed_ms
                    .map_or_else(|| "-".into(), |m| format!("{:.1}", m as f64 / 1000.0)),
                match &f.fault.watch {
                    Some(_) => f
                        .detected_after_ms
                        .map_or_else(|| "never".into(), |m| m.to_string()),
                    None => "-".into(),
                },
                if f.ok { "ok" } else { "fail" },
                f.avoided_after_ms
                    .map_or_else(|| "never".into(), |m| m.to_string()),
                f.fault
                    .watch
                    .as_ref()
                    .map_or_else(|| "-".into(), |w| w.out_ms.to_string()),
                f.fault.bound_ms,
                f.answers_to_dead_edges,
                f.false_disruptions,
                f.rooms_disrupted,
                f.max_room_recovery_ms
                    .map_or_else(|| "-".into(), |m| m.to_string()),
                esc(&f.fault.action)
            );
        }
        h.push_str("</table><small>detected after: from the fault to when every locator had the edge out of new sessions (the failure detector's faults, watched on the locators). Avoided after: for those, the later of that and the last answer naming the edge; for the others, the first answer after which no answer names a dead edge (a locator restart: to its first successful answer). Out: how long any locator kept the edge out of new sessions.</small>");
    }
    if !report.errors.is_empty() {
        h.push_str(
            "<h2>Errors by kind</h2><table><tr><th>kind</th><th>retriable</th><th>count</th></tr>",
        );
        for e in &report.errors {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.kind),
                if e.retriable { "yes" } else { "no" },
                e.count
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<h2>Fallback</h2><p>{} of {} answers ({:.1}%) were served by a fallback region.</p><table><tr><th>reason</th><th>answers</th><th>of which fallback</th></tr>",
        report.fallback.fallback,
        report.fallback.answers,
        report.fallback.share * 100.0
    );
    for (reason, n) in &report.fallback.all_reasons {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(reason),
            n,
            report.fallback.reasons.get(reason).copied().unwrap_or(0)
        );
    }
    h.push_str("</table>");
    if let Some(b) = &report.balance {
        let _ = write!(
            h,
            "<h2>Balance after the burst</h2><p>Worst max/mean sessions per edge: <b>{}</b> (limit {}).</p><table><tr><th>region</th><th>max/mean</th><th style=\"text-align:left\">sessions per edge</th></tr>",
            b.worst.map_or_else(|| "n/a".into(), |w| format!("{w:.3}")),
            b.limit
        );
        for (r, rb) in &b.regions {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.3}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(r),
                rb.max_over_mean,
                esc(&rb
                    .sessions
                    .iter()
                    .map(|(e, n)| format!("{e}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "))
            );
        }
        h.push_str("</table>");
    }
    let s = &report.sessions;
    let m = &report.messages;
    let a = &report.audit;
    let _ = write!(
        h,
        "<h2>Sessions, messages and audit</h2><table>\
<tr><td>sessions (rooms / ad-hoc)</td><td>{} ({} / {})</td></tr>\
<tr><td>participants admitted</td><td>{}</td></tr>\
<tr><td>deliberate disconnect + re-join</td><td>{}</td></tr>\
<tr><td>disrupted (without a fault)</td><td>{} ({})</td></tr>\
<tr><td>recovered / ended by the locator (410) / lost</td><td>{} / {} / {}</td></tr>\
<tr><td>messages sent / deliveries due / delivered</td><td>{} / {} / {}</td></tr>\
<tr><td>in undisrupted sessions: due / delivered</td><td>{} / {}</td></tr>\
<tr><td>participant_joined expected / stored / lost / duplicated</td><td>{} / {} / {} / {}</td></tr>\
<tr><td>participant_left expected / stored / lost / duplicated</td><td>{} / {} / {} / {}</td></tr>\
<tr><td>audit rows relayed by edges</td><td>{}</td></tr></table><small>{}</small>",
        s.started,
        s.keyed,
        s.ad_hoc,
        s.admitted_participants,
        s.rejoins,
        s.disrupted,
        s.disrupted_without_fault,
        s.recovered,
        s.ended_by_edge,
        s.lost,
        m.sent,
        m.expected,
        m.delivered,
        m.undisrupted_expected,
        m.undisrupted_delivered,
        a.expected_joined,
        a.stored_joined,
        a.lost_joined,
        a.duplicated_joined,
        a.expected_left,
        a.stored_left,
        a.lost_left,
        a.duplicated_left,
        a.edge_rows_stored,
        esc(&a.note)
    );
    if !report.notes.is_empty() {
        h.push_str("<h2>Notes</h2><ul>");
        for n in &report.notes {
            let _ = write!(h, "<li>{}</li>", esc(n));
        }
        h.push_str("</ul>");
    }
    if report
        .target
        .address_source
        .to_ascii_lowercase()
        .contains("dbip")
        || report.target.geoip.to_ascii_lowercase().contains("dbip")
    {
        h.push_str(r#"<p><small><a href="https://db-ip.com">IP Geolocation by DB-IP</a> (CC BY 4.0).</small></p>"#);
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(13.0), 20.0);
        assert_eq!(nice_max(230.0), 250.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a \"b\">&"), "&lt;a &quot;b&quot;&gt;&amp;");
    }
}
