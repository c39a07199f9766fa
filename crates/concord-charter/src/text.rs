//! The canonical text of a charter version. One fact per line, members sorted by id, schemas by
//! name, so that the same content always gives the same bytes:
//!
//! ```text
//! concord/charter/v1
//! federation demo
//! version 1
//! previous none
//! threshold 2
//! witness-quorum 1
//! witnesses-per-log 8          (only when set: every other member otherwise)
//! min-group-size 10
//! member alpha
//!   name Alpha Statistics Office
//!   jurisdiction AL
//!   vkey demo/alpha+1a2b3c4d+AZ...
//!   witness demo/alpha/witness+5e6f7a8b+BA...
//!   tls-pin sha256/...
//!   endpoint 127.0.0.1:7101
//! schema health_cases 1
//!   column case_id int64 personal
//!   column region utf8
//! ```

use std::fmt::Write as _;

use crate::{
    AccessNotes, Charter, CharterError, ColumnType, CrossBorders, MemberCard, SchemaColumn, SharedSchema,
};

/// First line of every charter version's canonical text.
pub const CHARTER_TYPE_LINE: &str = "concord/charter/v1";

pub(crate) fn render(c: &Charter) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "{CHARTER_TYPE_LINE}");
    let _ = writeln!(s, "federation {}", c.federation);
    let _ = writeln!(s, "version {}", c.version);
    let _ = writeln!(s, "previous {}", c.previous.as_deref().unwrap_or("none"));
    let _ = writeln!(s, "threshold {}", c.threshold);
    let _ = writeln!(s, "witness-quorum {}", c.witness_quorum);
    // Written only when set, so versions from before the setting read byte for byte.
    if let Some(k) = c.witnesses_per_log {
        let _ = writeln!(s, "witnesses-per-log {k}");
    }
    let _ = writeln!(s, "min-group-size {}", c.min_group_size);
    // Written only when it differs from the default, so versions from before the rule read
    // and render byte for byte as they were signed.
    if c.cross_borders != CrossBorders::default() {
        let _ = writeln!(s, "cross-borders {}", c.cross_borders.as_str());
    }
    if c.access_notes != AccessNotes::default() {
        let _ = writeln!(s, "access-notes {}", c.access_notes.as_str());
    }
    for m in &c.members {
        let _ = writeln!(s, "member {}", m.id);
        let _ = writeln!(s, "  name {}", m.name);
        let _ = writeln!(s, "  jurisdiction {}", m.jurisdiction);
        let _ = writeln!(s, "  vkey {}", m.vkey);
        let _ = writeln!(s, "  witness {}", m.witness_vkey);
        let _ = writeln!(s, "  tls-pin {}", m.tls_pin);
        let _ = writeln!(s, "  endpoint {}", m.peer_endpoint);
    }
    for sc in &c.schemas {
        let _ = writeln!(s, "schema {} {}", sc.name, sc.version);
        for col in &sc.columns {
            let personal = if col.personal { " personal" } else { "" };
            let _ = writeln!(s, "  column {} {}{personal}", col.name, col.ty);
        }
        // Written only when named, so schemas from before the rule read byte for byte.
        if let Some(u) = &sc.privacy_unit {
            let _ = writeln!(s, "  privacy-unit {u}");
        }
    }
    s
}

struct Lines<'a> {
    inner: std::iter::Peekable<std::iter::Enumerate<std::str::Lines<'a>>>,
}

impl<'a> Lines<'a> {
    fn err(line: usize, reason: impl Into<String>) -> CharterError {
        CharterError::Malformed { line: line + 1, reason: reason.into() }
    }

    /// The next line, which must be `<key> <value>` at the given indent.
    fn field(&mut self, key: &str, indent: &str) -> Result<(usize, &'a str), CharterError> {
        let (n, line) =
            self.inner.next().ok_or_else(|| Self::err(usize::MAX - 1, format!("missing {key}")))?;
        let rest = line
            .strip_prefix(indent)
            .and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or_else(|| Self::err(n, format!("expected `{indent}{key} ...`, found {line:?}")))?;
        Ok((n, rest))
    }

    fn next_is(&mut self, prefix: &str) -> bool {
        self.inner.peek().is_some_and(|(_, l)| l.starts_with(prefix))
    }
}

fn number<T: std::str::FromStr>(n: usize, what: &str, s: &str) -> Result<T, CharterError> {
    s.parse().map_err(|_| Lines::err(n, format!("{what} {s:?} is not a number")))
}

pub(crate) fn parse(s: &str) -> Result<Charter, CharterError> {
    let mut lines = Lines { inner: s.lines().enumerate().peekable() };
    match lines.inner.next() {
        Some((_, l)) if l == CHARTER_TYPE_LINE => {}
        _ => return Err(Lines::err(0, format!("first line must be {CHARTER_TYPE_LINE}"))),
    }
    let (_, federation) = lines.field("federation", "")?;
    let (n, version) = lines.field("version", "")?;
    let version = number(n, "version", version)?;
    let (_, previous) = lines.field("previous", "")?;
    let previous = (previous != "none").then(|| previous.to_owned());
    let (n, threshold) = lines.field("threshold", "")?;
    let threshold = number(n, "threshold", threshold)?;
    let (n, quorum) = lines.field("witness-quorum", "")?;
    let witness_quorum = number(n, "witness quorum", quorum)?;
    let witnesses_per_log = if lines.next_is("witnesses-per-log ") {
        let (n, k) = lines.field("witnesses-per-log", "")?;
        Some(number(n, "witnesses per log", k)?)
    } else {
        None
    };
    let (n, min_group) = lines.field("min-group-size", "")?;
    let min_group_size = number(n, "minimum group size", min_group)?;
    let cross_borders = parse_cross_borders(&mut lines)?;
    let access_notes = parse_access_notes(&mut lines)?;
    let members = parse_members(&mut lines)?;
    let schemas = parse_schemas(&mut lines)?;
    if let Some((n, l)) = lines.inner.next() {
        return Err(Lines::err(n, format!("unexpected line {l:?}")));
    }
    Ok(Charter {
        federation: federation.to_owned(),
        version,
        previous,
        threshold,
        witness_quorum,
        witnesses_per_log,
        min_group_size,
        cross_borders,
        access_notes,
        members,
        schemas,
    })
}

/// Reads the optional `cross-borders` line; without it, the default.
fn parse_cross_borders(lines: &mut Lines<'_>) -> Result<CrossBorders, CharterError> {
    Ok(if lines.next_is("cross-borders ") {
        let (n, c) = lines.field("cross-borders", "")?;
        CrossBorders::parse(c).ok_or_else(|| {
            Lines::err(n, format!("cross-borders {c:?} is not public, general or important"))
        })?
    } else {
        CrossBorders::default()
    })
}

/// Reads the optional `access-notes` line; without it, the default.
fn parse_access_notes(lines: &mut Lines<'_>) -> Result<AccessNotes, CharterError> {
    Ok(if lines.next_is("access-notes ") {
        let (n, v) = lines.field("access-notes", "")?;
        AccessNotes::parse(v)
            .ok_or_else(|| Lines::err(n, format!("access-notes {v:?} is not parties or public")))?
    } else {
        AccessNotes::default()
    })
}

/// Reads the `member` blocks, each an id line followed by its six indented fields.
fn parse_members(lines: &mut Lines<'_>) -> Result<Vec<MemberCard>, CharterError> {
    let mut members = Vec::new();
    while lines.next_is("member ") {
        let (_, id) = lines.field("member", "")?;
        members.push(MemberCard {
            id: id.to_owned(),
            name: lines.field("name", "  ")?.1.to_owned(),
            jurisdiction: lines.field("jurisdiction", "  ")?.1.to_owned(),
            vkey: lines.field("vkey", "  ")?.1.to_owned(),
            witness_vkey: lines.field("witness", "  ")?.1.to_owned(),
            tls_pin: lines.field("tls-pin", "  ")?.1.to_owned(),
            peer_endpoint: lines.field("endpoint", "  ")?.1.to_owned(),
        });
    }
    Ok(members)
}

/// Reads the `schema` blocks that follow the members.
fn parse_schemas(lines: &mut Lines<'_>) -> Result<Vec<SharedSchema>, CharterError> {
    let mut schemas = Vec::new();
    while lines.next_is("schema ") {
        schemas.push(parse_schema(lines)?);
    }
    Ok(schemas)
}

/// Reads one `schema` block: its head line, its columns and its optional privacy unit.
fn parse_schema(lines: &mut Lines<'_>) -> Result<SharedSchema, CharterError> {
    let (n, head) = lines.field("schema", "")?;
    let (name, version) =
        head.split_once(' ').ok_or_else(|| Lines::err(n, "expected `schema <name> <version>`"))?;
    let mut columns = Vec::new();
    while lines.next_is("  column ") {
        columns.push(parse_column(lines)?);
    }
    let privacy_unit = if lines.next_is("  privacy-unit ") {
        Some(lines.field("privacy-unit", "  ")?.1.to_owned())
    } else {
        None
    };
    Ok(SharedSchema {
        name: name.to_owned(),
        version: number(n, "schema version", version)?,
        columns,
        privacy_unit,
    })
}

/// Reads one `  column <name> <type> [personal]` line of a schema block.
fn parse_column(lines: &mut Lines<'_>) -> Result<SchemaColumn, CharterError> {
    let (n, col) = lines.field("column", "  ")?;
    let parts: Vec<&str> = col.split(' ').collect();
    let personal = match parts.get(2) {
        None => false,
        Some(&"personal") if parts.len() == 3 => true,
        _ => return Err(Lines::err(n, "expected `column <name> <type> [personal]`")),
    };
    Ok(SchemaColumn {
        name: parts[0].to_owned(),
        ty: ColumnType::parse(parts.get(1).copied().unwrap_or(""))?,
        personal,
    })
}
