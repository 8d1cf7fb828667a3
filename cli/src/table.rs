//! kubectl-style tables, driven by the CRDs' own printer columns so `recastctl get` and
//! `kubectl get` show the same thing.

use jiff::Timestamp;
use recast_crds::manifest::Kind;
use serde_json::Value;

pub struct Column {
    pub name: String,
    pub json_path: String,
    pub type_: String,
    pub priority: i32,
}

/// The printer columns of a kind, from its generated CRD.
pub fn columns(kind: Kind) -> Vec<Column> {
    recast_crds::all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind.as_str())
        .and_then(|c| c.spec.versions.into_iter().next())
        .and_then(|v| v.additional_printer_columns)
        .unwrap_or_default()
        .into_iter()
        .map(|c| Column {
            name: c.name.to_uppercase(),
            json_path: c.json_path,
            type_: c.type_,
            priority: c.priority.unwrap_or(0),
        })
        .collect()
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, and one filter step
/// `[?(@.type=="X")]` on a list.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(filter) = rest.strip_prefix("[?(@.") {
            let end = filter.find(")]")?;
            let (cond, after) = (&filter[..end], &filter[end + 2..]);
            let (field, want) = cond.split_once("==")?;
            let want = want.trim_matches('"');
            cur = cur
                .as_array()?
                .iter()
                .find(|item| item.get(field).and_then(Value::as_str) == Some(want))?;
            rest = after.trim_start_matches('.');
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

/// "5m", "3h", "12d", as kubectl prints ages.
pub fn age(since: &str, now: Timestamp) -> String {
    let Ok(t) = since.parse::<Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cell(v: Option<&Value>, type_: &str, now: Timestamp) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if type_ == "date" => age(s, now),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Renders objects as a table. `wide` adds the priority-1 columns; `namespaced` adds the
/// NAMESPACE column (for `-A`).
pub fn render(
    kind: Kind,
    objects: &[Value],
    wide: bool,
    all_namespaces: bool,
    now: Timestamp,
) -> String {
    plain(&rows(kind, objects, wide, all_namespaces, now))
}

/// The header row, then one row per object: what `render` lays out.
pub fn rows(
    kind: Kind,
    objects: &[Value],
    wide: bool,
    all_namespaces: bool,
    now: Timestamp,
) -> Vec<Vec<String>> {
    let cols: Vec<Column> = columns(kind)
        .into_iter()
        .filter(|c| wide || c.priority == 0)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".to_string());
    }
    header.push("NAME".to_string());
    header.extend(cols.iter().map(|c| c.name.clone()));
    rows.push(header);
    for o in objects {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(cell(eval(o, ".metadata.namespace"), "string", now));
        }
        row.push(cell(eval(o, ".metadata.name"), "string", now));
        row.extend(
            cols.iter()
                .map(|c| cell(eval(o, &c.json_path), &c.type_, now)),
        );
        rows.push(row);
    }
    rows
}

/// Which cells of `rows`' rows are ages (they change every second by themselves, so a watch
/// does not count them as a change).
pub fn age_cells(kind: Kind, wide: bool, all_namespaces: bool) -> Vec<bool> {
    let mut ages = vec![false; 1 + usize::from(all_namespaces)];
    ages.extend(
        columns(kind)
            .into_iter()
            .filter(|c| wide || c.priority == 0)
            .map(|c| c.type_ == "date"),
    );
    ages
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn plain(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    rows.iter().map(|r| line(r, &widths)).collect()
}

/// The width of each column: its widest cell.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// One row laid out in `widths` (a wider cell pushes the rest right), with its newline.
pub fn line(r: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, c) in r.iter().enumerate() {
        if i + 1 == r.len() {
            line.push_str(c);
        } else {
            let w = widths.get(i).copied().unwrap_or(0);
            line.push_str(&format!("{c:<w$}   "));
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_printer_column_paths() {
        let o = json!({"status": {"phase": "Ready", "conditions": [
            {"type": "Verified", "status": "True"}, {"type": "KnownGood", "status": "False"}]}});
        assert_eq!(eval(&o, ".status.phase"), Some(&json!("Ready")));
        assert_eq!(
            eval(&o, ".status.conditions[?(@.type==\"KnownGood\")].status"),
            Some(&json!("False"))
        );
        assert_eq!(
            eval(&o, ".status.conditions[?(@.type==\"Missing\")].status"),
            None
        );
        assert_eq!(eval(&o, ".spec.site"), None);
    }

    #[test]
    fn ages_like_kubectl() {
        let now: Timestamp = "2026-01-14T12:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-14T11:59:30Z", now), "30s");
        assert_eq!(age("2026-01-14T11:00:00Z", now), "60m");
        assert_eq!(age("2026-01-13T12:00:00Z", now), "24h");
        assert_eq!(age("2026-01-01T12:00:00Z", now), "13d");
        assert_eq!(age("garbage", now), "<unknown>");
    }

    #[test]
    fn endpoint_columns_match_the_crd() {
        let names: Vec<String> = columns(Kind::Endpoint)
            .into_iter()
            .filter(|c| c.priority == 0)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            ["SITE", "PHASE", "STEP", "BUILD", "IMAGE", "UPDATES", "AGE"]
        );
    }
}
