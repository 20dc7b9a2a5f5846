//! Renders an [`Inspection`] as tables: one per structure, then the operation
//! counts and the invariants. Pure: the same snapshot (and previous snapshot)
//! always gives the same text, which is what the tests check.

use crate::core::snapshot::QueueSnapshot;
use crate::names::UserId;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};

use colored::Colorize;

use crate::core::{ConnDetail, Invariant, OpTable, Structure, StructuresSnapshot};
use crate::inspection::Inspection;
use crate::names::Name;
use crate::output::{clock, duration, name_list, nanos, paint};
use crate::protocol::{Message, Target};

/// How to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// ANSI colours (and terminal-width layout).
    pub color: bool,
    /// Rows per table before "... and N more".
    pub rows: usize,
    /// Which structures and rows to show.
    pub view: View,
    /// Where the snapshot came from, for the header.
    pub source: String,
    /// For a live screen (`serve --dashboard`): the structures in two columns,
    /// one title line each, the operations as one row per structure, so all
    /// five and the operations fit a 120x40 terminal.
    pub compact: bool,
    /// The screen's width in columns: explanatory lines wrap at it, and the
    /// compact layout splits it in two (None: no wrapping; 120 when compact).
    pub width: Option<usize>,
}

/// What to show: `--only STRUCTURE`, `--user NAME`, `--group NAME`, the same
/// flags on `inspect` and `serve --dashboard`. The default shows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// One structure, at full width, with its own operations only.
    pub only: Option<Structure>,
    /// Only this user's rows.
    pub user: Option<Name>,
    /// Only this group, and its members' rows.
    pub group: Option<Name>,
}

impl View {
    /// `--only`'s values: the seed's names, or the short words `bench --only` takes.
    pub fn parse_structure(raw: &str) -> Result<Structure, String> {
        let short = [
            ("connections", Structure::ActiveConnections),
            ("queue", Structure::OfflineMessages),
            ("offline", Structure::OfflineMessages),
            ("groups", Structure::GroupMembers),
            ("blocks", Structure::BlockedUsers),
        ];
        Structure::ALL
            .iter()
            .map(|s| (s.name(), *s))
            .chain(short)
            .find(|(name, _)| name.eq_ignore_ascii_case(raw.trim()))
            .map(|(_, s)| s)
            .ok_or_else(|| {
                format!(
                    "'{raw}' is not a structure; use one of {} (or connections, queue, groups, blocks)",
                    Structure::ALL.map(Structure::name).join(", ")
                )
            })
    }
}

/// Names listed in one cell before "... and N more".
const NAMES_PER_CELL: usize = 8;
/// Characters of a message shown in the offline table.
const PREVIEW_CHARS: usize = 24;

struct Ctx<'a> {
    o: &'a RenderOptions,
    now_ms: u64,
    /// Users whose rows are shown (None: everyone).
    users: Option<BTreeSet<Name>>,
    /// The compact layout's column width: every table fits it.
    column: Option<usize>,
}

impl Ctx<'_> {
    fn shows(&self, user: &Name) -> bool {
        self.users.as_ref().is_none_or(|u| u.contains(user))
    }

    fn paint(&self, text: String, color: Color) -> Cell {
        let cell = Cell::new(text);
        if self.o.color {
            cell.fg(color)
        } else {
            cell
        }
    }

    fn table(&self, header: &[&str]) -> Table {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        if self.o.color {
            t.enforce_styling();
            t.set_content_arrangement(ContentArrangement::Dynamic);
        } else {
            t.force_no_tty();
        }
        if let Some(column) = self.column {
            t.set_content_arrangement(ContentArrangement::Dynamic);
            t.set_width(u16::try_from(column).unwrap_or(u16::MAX));
        }
        t.set_header(header.iter().map(|h| {
            let c = Cell::new(h);
            if self.o.color {
                c.add_attribute(Attribute::Bold)
            } else {
                c
            }
        }));
        t
    }

    fn title(&self, out: &mut String, structure: Structure, extra: &str) {
        let facts = structure.facts();
        let (name, ty, cost, why) = (facts.name, facts.rust_type, facts.headline, facts.why);
        if let Some(column) = self.column {
            // One line when it fits; else the type goes on a line of its own.
            // Nothing is cut: a student copies these types into the viva.
            let (name, cost, ty) = if self.o.color {
                (
                    name.bold().cyan().to_string(),
                    cost.green().to_string(),
                    ty.yellow().to_string(),
                )
            } else {
                (name.to_string(), cost.to_string(), ty.to_string())
            };
            let line = format!("{name}  {cost}  {ty}{extra}");
            if crate::terminal::width(&line) <= column {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "{name}  {cost}\n  {ty}{extra}");
            }
            return;
        }
        if self.o.color {
            let _ = writeln!(
                out,
                "\n{}  {}  {}{extra}",
                name.bold().cyan(),
                ty.yellow(),
                cost.green()
            );
            let _ = writeln!(out, "{}", why.dimmed());
        } else {
            let _ = writeln!(out, "\n{name}  {ty}  {cost}{extra}");
            let _ = writeln!(out, "{why}");
        }
    }

    /// A count, with its change since the previous frame.
    fn count(&self, now: usize, before: Option<Option<usize>>) -> Cell {
        match before {
            None => Cell::new(now).set_alignment(CellAlignment::Right),
            Some(None) => self
                .paint(now.to_string(), Color::Green)
                .set_alignment(CellAlignment::Right),
            Some(Some(b)) if now > b => self
                .paint(format!("{now} (+{})", now - b), Color::Green)
                .set_alignment(CellAlignment::Right),
            Some(Some(b)) if now < b => self
                .paint(format!("{now} (-{})", b - now), Color::Yellow)
                .set_alignment(CellAlignment::Right),
            Some(Some(_)) => Cell::new(now).set_alignment(CellAlignment::Right),
        }
    }

    /// The key cell of a row: green and marked "(new)" if absent from the previous frame.
    fn key(&self, key: &str, is_new: bool) -> Cell {
        if is_new {
            self.paint(format!("{key} (new)"), Color::Green)
        } else {
            Cell::new(key)
        }
    }

    fn ago(&self, then_ms: u64) -> String {
        let secs = self.now_ms.saturating_sub(then_ms) / 1000;
        match secs {
            0..=59 => format!("{secs}s ago"),
            60..=3599 => format!("{}m ago", secs / 60),
            _ => format!("{}h{:02}m ago", secs / 3600, secs / 60 % 60),
        }
    }

    fn preview(&self, m: &Message) -> String {
        // A compact column shows the message briefly: its id and first words.
        let chars = if self.column.is_some() {
            8
        } else {
            PREVIEW_CHARS
        };
        let mut text: String = m.text.chars().take(chars).collect();
        if m.text.chars().count() > chars {
            text.push('…');
        }
        if self.column.is_some() {
            return format!(
                "#{} \"{}\"",
                m.id,
                crate::output::inert(&text).replace('"', "\\\"")
            );
        }
        let via = match &m.target {
            Target::Group(g) => format!(" in #{g}"),
            Target::User(_) => String::new(),
        };
        format!(
            "#{} from {}{via}, {}: \"{}\"",
            m.id,
            m.from,
            self.ago(m.ts),
            crate::output::inert(&text).replace('"', "\\\"")
        )
    }

    /// Every operation: count, change since `previous`, cost class and mean time.
    fn ops_table(&self, ops: &OpTable, previous: Option<&OpTable>) -> Table {
        let mut header = vec!["structure", "operation", "count"];
        if previous.is_some() {
            header.push("since last frame");
        }
        header.extend(["cost", "mean time"]);
        let mut t = self.table(&header);
        let shown = |r: &&crate::core::ops::OpCount| {
            (!self.o.compact || r.count > 0) && self.o.view.only.is_none_or(|s| s == r.structure)
        };
        for row in ops.0.iter().filter(shown) {
            let mut cells = vec![
                Cell::new(row.structure.name()),
                Cell::new(row.op.name()),
                Cell::new(row.count).set_alignment(CellAlignment::Right),
            ];
            if let Some(previous) = previous {
                let before = previous.get(row.structure, row.op);
                let change = if row.count > before {
                    self.paint(format!("+{}", row.count - before), Color::Green)
                } else {
                    Cell::new("")
                };
                cells.push(change.set_alignment(CellAlignment::Right));
            }
            cells.push(Cell::new(&row.complexity));
            cells.push(Cell::new(nanos(row.mean_ns)).set_alignment(CellAlignment::Right));
            t.add_row(cells);
        }
        t
    }

    /// Adds "... and N more" when rows were cut, and "gone since last frame" lines.
    fn finish(
        &self,
        out: &mut String,
        mut table: Table,
        hidden: usize,
        unit: &str,
        gone: Vec<String>,
    ) {
        // An empty structure says so, instead of a bare header.
        if table.row_count() == 0 {
            table.add_row(vec![Cell::new("(empty)")]);
        }
        let _ = writeln!(out, "{table}");
        let unit = if hidden == 1 {
            unit.trim_end_matches('s')
        } else {
            unit
        };
        if hidden > 0 && self.column.is_some() {
            let _ = writeln!(
                out,
                "... and {hidden} more {unit} (--only or --user shows them)"
            );
        } else if hidden > 0 {
            let _ = writeln!(
                out,
                "... and {hidden} more {unit} (use --rows or --user to see them)"
            );
        }
        if !gone.is_empty() {
            let line = format!("gone since the last frame: {}", gone.join(", "));
            let _ = if self.o.color {
                writeln!(out, "{}", line.red())
            } else {
                writeln!(out, "{line}")
            };
        }
    }
}

/// The operations table alone (the server prints it when it stops).
pub fn ops_table(ops: &OpTable, color: bool) -> Table {
    let options = RenderOptions {
        color,
        rows: usize::MAX,
        view: View::default(),
        source: String::new(),
        compact: false,
        width: None,
    };
    let ctx = Ctx {
        column: None,
        o: &options,
        now_ms: 0,
        users: None,
    };
    ctx.ops_table(ops, None)
}

/// Renders the document; with `previous`, marks what changed since it.
pub fn render(doc: &Inspection, previous: Option<&Inspection>, o: &RenderOptions) -> String {
    let (head, body) = render_parts(doc, previous, o);
    head + &body
}

/// The rendering in two parts: the two header lines (which a live screen
/// cuts at its width, so they stay two) and everything below them.
/// `serve --dashboard` puts its event log between the two.
pub fn render_parts(
    doc: &Inspection,
    previous: Option<&Inspection>,
    o: &RenderOptions,
) -> (String, String) {
    let s = &doc.snapshot;
    let st = &s.structures;
    let users = match (&o.view.user, &o.view.group) {
        (Some(u), _) => Some(BTreeSet::from([u.clone()])),
        (None, Some(g)) => Some(
            st.groups
                .get(g)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default(),
        ),
        (None, None) => None,
    };
    let now_ms = doc.server.as_ref().map_or(0, |i| i.taken_at_ms);
    // Two columns and a gap of 2 in the compact layout; one structure alone
    // has the whole width.
    let column = (o.compact && o.view.only.is_none())
        .then(|| (o.width.unwrap_or(120).saturating_sub(2) / 2).max(30));
    let c = Ctx {
        o,
        now_ms,
        users,
        column,
    };
    let p = previous.map(|p| &p.snapshot.structures);
    let ops_before = previous.map(|p| &p.snapshot.op_table);
    let (mut head, mut out) = (String::new(), String::new());
    header(&mut head, &mut out, doc, o);
    match (o.view.only, column) {
        (Some(only), _) => c.structure(only, &mut out, st, p),
        (None, Some(column)) => {
            let (mut left, mut right) = (String::new(), String::new());
            for structure in Structure::ALL {
                let side = match structure {
                    Structure::ActiveConnections
                    | Structure::Presence
                    | Structure::OfflineMessages => &mut left,
                    Structure::GroupMembers | Structure::BlockedUsers => &mut right,
                };
                c.structure(structure, side, st, p);
            }
            c.operations(&mut right, &s.op_table, ops_before);
            out += &crate::terminal::side_by_side(&left, &right, column, 2);
        }
        (None, None) => {
            for structure in Structure::ALL {
                c.structure(structure, &mut out, st, p);
            }
        }
    }
    if column.is_none() {
        c.operations(&mut out, &s.op_table, ops_before);
    }
    invariants(
        &mut out,
        &s.invariants,
        o.color,
        o.compact.then_some(o.width.unwrap_or(120)),
    );
    let width = o.width.or(o.compact.then_some(120));
    (
        fit_width(&head, width, o.compact),
        fit_width(&out, width, column.is_some()),
    )
}

/// Every line within `width`: tables are already laid out to fit; other
/// lines are wrapped at spaces (or, on a compact live screen, cut).
fn fit_width(text: &str, width: Option<usize>, cut: bool) -> String {
    let Some(width) = width else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let fits = crate::terminal::width(line) <= width;
        let table = line.starts_with(['│', '┌', '└', '╞', '├']);
        if fits || table {
            out.push_str(line);
            out.push('\n');
        } else if cut {
            out.push_str(&crate::terminal::clip(line, width));
            out.push('\n');
        } else {
            for part in crate::terminal::wrap(line, width.max(20)) {
                out.push_str(&part);
                out.push('\n');
            }
        }
    }
    out
}

/// Where, when, how long the snapshot held the core (two lines, into `head`);
/// the disk, the claims and the filters (into `out`).
fn header(head_out: &mut String, out: &mut String, doc: &Inspection, o: &RenderOptions) {
    let (s, st) = (&doc.snapshot, &doc.snapshot.structures);
    let mut parts = vec![format!("vivachat · {}", o.source)];
    if let Some(lecture) = doc.server.as_ref().and_then(|i| i.lecture.as_ref()) {
        // A replay: a step of a recording, with no sockets and no clock.
        parts.extend([
            format!("replay of {}", lecture.source),
            format!("step {} of {}", lecture.step, lecture.steps),
            clock(doc.server.as_ref().map_or(0, |i| i.taken_at_ms)),
        ]);
    } else if let Some(info) = &doc.server {
        parts.extend([
            clock(info.taken_at_ms),
            format!("up {}", duration(info.uptime_ms)),
            format!("core held {} µs", info.hold_us),
            match (&info.cluster, &info.durable, &info.data_path) {
                (Some(c), ..) => format!(
                    "cluster node {} of {} on Redis {}",
                    c.node,
                    c.nodes.join(", "),
                    c.redis
                ),
                (None, true, Some(path)) => format!("durable: {path}"),
                (None, true, None) => "durable".to_string(),
                (None, false, _) => "in memory: lost on restart".to_string(),
            },
        ]);
        // Its own part, so a narrow screen puts it on a line of its own.
        if let Some(slot) = info.cluster.as_ref().and_then(|c| c.redis_cluster.clone()) {
            parts.push(slot);
        }
    }
    // On a live screen the parts go on as many lines as they need, never cut.
    let head = match (o.compact, o.width) {
        (true, Some(w)) => pack(&parts, " · ", w).join("\n"),
        _ => parts.join(" · "),
    };
    let queued: usize = st.offline_messages.values().map(|q| q.len).sum();
    let summary = format!(
        "{} connection(s), {} online, {} queued message(s), {} group(s), next message id {}",
        st.connection_details
            .len()
            .max(st.active_connections.values().map(Vec::len).sum()),
        st.presence.len(),
        queued,
        st.groups.len(),
        s.next_message_id
    );
    let _ = writeln!(
        head_out,
        "{}\n{}",
        paint(&head, o.color, |t| t.bold()),
        paint(&summary, o.color, |t| t.dimmed())
    );
    if let Some(disk) = doc.server.as_ref().and_then(|i| i.disk.as_ref()) {
        let per_commit = disk.changes as f64 / disk.commits.max(1) as f64;
        let _ = writeln!(
            out,
            "disk (SQLite, group commit): {} change(s) in {} commit(s), {per_commit:.1} per fsync on average, at most {} in one",
            disk.changes, disk.commits, disk.largest_commit
        );
        if let Some(why) = &disk.failing {
            let line = format!(
                "disk writes are FAILING ({why}): queueing, joins, leaves and blocks are refused with `unavailable` until they work again"
            );
            let _ = writeln!(out, "{}", paint(&line, o.color, |t| t.red().bold()));
        }
    }
    if let Some(info) = doc.server.as_ref().filter(|i| !i.claimed_names.is_empty()) {
        let _ = writeln!(out, "{}", claims_line(&info.claimed_names, o));
    }
    if let Some(c) = doc.server.as_ref().and_then(|i| i.cluster.as_ref()) {
        let _ = writeln!(out, "{}", redis_line(c, o));
        if let Some(line) = batches_line(&c.batches) {
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(only) = o.view.only {
        let _ = writeln!(out, "showing only {}", only.name());
    }
    if let Some(u) = &o.view.user {
        let _ = writeln!(out, "showing only user {u}");
    }
    if let Some(g) = &o.view.group {
        let _ = writeln!(out, "showing only group {g} and its members");
    }
}

/// The claimed names. A live screen gives them one line (context, not the
/// lesson): as many names as fit, and how many more there are.
fn claims_line(names: &[Name], o: &RenderOptions) -> String {
    match (o.compact, o.width) {
        (true, Some(w)) => {
            let lead = format!(
                "name claims (HashMap<UserId, Argon2id hash>, O(1) look-up): {} claimed: ",
                names.len()
            );
            let fits = (0..=names.len())
                .rev()
                .find(|&k| crate::terminal::width(&format!("{lead}{}", name_list(names, k))) <= w)
                .unwrap_or(0);
            format!("{lead}{}", name_list(names, fits))
        }
        _ => format!(
            "name claims (HashMap<UserId, Argon2id hash>: O(1) look-up, then one slow check by design): {} claimed: {}",
            names.len(),
            name_list(names, o.rows.max(NAMES_PER_CELL))
        ),
    }
}

/// The Redis commands a cluster node ran, most used first; a live screen
/// shows those that fit one line, and how many more.
fn redis_line(c: &crate::inspection::ClusterInfo, o: &RenderOptions) -> String {
    let all: Vec<String> = c
        .redis_commands
        .iter()
        .map(|r| format!("{} x{} {}", r.command, r.count, r.complexity))
        .collect();
    let line = |k: usize| {
        let mut line = format!(
            "Redis commands this node ran (the in-memory operations, shared): {}",
            if all.is_empty() {
                "none yet".to_string()
            } else {
                all[..k].join(" · ")
            }
        );
        if k < all.len() {
            line += &format!(" · and {} more", all.len() - k);
        }
        line
    };
    let most = all.len().min(8);
    let k = match (o.compact, o.width) {
        (true, Some(w)) => (0..=most)
            .rev()
            .find(|&k| crate::terminal::width(&line(k)) <= w)
            .unwrap_or(0),
        _ => most,
    };
    line(k)
}

/// How many direct messages shared each of the node's batch round trips
/// (`cluster/prefetch.rs`); nothing before the first.
fn batches_line(b: &crate::cluster::Batches) -> Option<String> {
    (b.round_trips > 0).then(|| {
        format!(
            "batched: {} direct messages in {} round trips ({:.1} rules in one round trip, at most {})",
            b.rules,
            b.round_trips,
            b.rules as f64 / b.round_trips as f64,
            b.largest
        )
    })
}

/// `parts` joined by `sep` on as few lines of at most `width` as they need;
/// a part wider than `width` alone gets a line of its own.
fn pack(parts: &[String], sep: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        match lines.last_mut() {
            Some(line)
                if crate::terminal::width(line)
                    + crate::terminal::width(sep)
                    + crate::terminal::width(part)
                    <= width =>
            {
                line.push_str(sep);
                line.push_str(part);
            }
            _ => lines.push(part.clone()),
        }
    }
    lines
}

/// One ✔ or ✘ line per invariant.
fn invariants(out: &mut String, invariants: &[Invariant], color: bool, compact: Option<usize>) {
    // A live screen says "all hold" in one line, and still every broken one in full.
    if let Some(width) = compact.filter(|_| invariants.iter().all(|i| i.holds)) {
        let names: Vec<&str> = invariants.iter().map(|i| i.name.as_ref()).collect();
        let all = format!("✔ all {} invariants hold", names.len());
        let mut line = format!("{all}: {}", names.join(" · "));
        if crate::terminal::width(&line) > width {
            line = all;
        }
        let _ = writeln!(out, "{}", paint(&line, color, |t| t.green()));
        return;
    }
    for inv in invariants {
        let line = match (&inv.detail, inv.holds) {
            (_, true) => format!("✔ {}", inv.name),
            (Some(d), false) => format!("✘ {}: {d}", inv.name),
            (None, false) => format!("✘ {}", inv.name),
        };
        let line = if inv.holds {
            paint(&line, color, |t| t.green())
        } else {
            paint(&line, color, |t| t.red().bold())
        };
        let _ = writeln!(out, "{line}");
    }
}

/// The keys of `before` that are gone from `now` (and shown), each with a note.
fn gone<K: Ord + std::fmt::Display, V, W>(
    before: Option<&BTreeMap<K, V>>,
    now: &BTreeMap<K, W>,
    shows: impl Fn(&K) -> bool,
    label: impl Fn(&K) -> String,
) -> Vec<String> {
    before
        .map(|b| {
            b.keys()
                .filter(|k| !now.contains_key(*k) && shows(k))
                .map(label)
                .collect()
        })
        .unwrap_or_default()
}

impl Ctx<'_> {
    fn active_connections(
        &self,
        out: &mut String,
        st: &StructuresSnapshot,
        p: Option<&StructuresSnapshot>,
    ) {
        self.title(out, Structure::ActiveConnections, "");
        // A compact column has no room for when each device connected, and
        // a narrow one none for the addresses either.
        let remote = self.column.is_none_or(|c| c >= 60);
        let mut header = vec!["user", "devices", "connection ids"];
        // A cluster: each socket lives on one node.
        let nodes = st.connection_details.iter().any(|d| d.node.is_some());
        if nodes {
            header.push("node");
        }
        if remote {
            header.push("remote address");
        }
        if self.column.is_none() {
            header.push("connected");
        }
        let mut t = self.table(&header);
        let rows: Vec<_> = st
            .active_connections
            .iter()
            .filter(|(u, _)| self.shows(u))
            .collect();
        for (user, ids) in rows.iter().take(self.o.rows) {
            let before = p.map(|p| p.active_connections.get(*user).map(Vec::len));
            let details: Vec<Option<&ConnDetail>> = ids
                .iter()
                .map(|id| {
                    let found = st.connection_details.binary_search_by_key(id, |d| d.id);
                    found.ok().map(|i| &st.connection_details[i])
                })
                .collect();
            let remotes: Vec<String> = details
                .iter()
                .map(|d| {
                    d.and_then(|d| d.remote.clone())
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            let since: Vec<String> = details
                .iter()
                .map(|d| {
                    d.and_then(|d| d.connected_at_ms)
                        .map_or_else(|| "-".into(), |ms| self.ago(ms))
                })
                .collect();
            let mut row = vec![
                self.key(user.as_str(), matches!(before, Some(None))),
                self.count(ids.len(), before),
                Cell::new(name_list(ids, NAMES_PER_CELL)),
            ];
            if nodes {
                let on: Vec<String> = details
                    .iter()
                    .map(|d| d.and_then(|d| d.node.clone()).unwrap_or_else(|| "-".into()))
                    .collect();
                row.push(Cell::new(name_list(&on, 3)));
            }
            if remote {
                row.push(Cell::new(name_list(&remotes, 3)));
            }
            if self.column.is_none() {
                row.push(Cell::new(name_list(&since, 3)));
            }
            t.add_row(row);
        }
        let gone = gone(
            p.map(|p| &p.active_connections),
            &st.active_connections,
            |u| self.shows(u),
            |u| format!("{u} (offline)"),
        );
        let hidden = rows.len().saturating_sub(self.o.rows);
        self.finish(out, t, hidden, "users", gone);
    }

    fn presence(&self, out: &mut String, st: &StructuresSnapshot, p: Option<&StructuresSnapshot>) {
        let shown: Vec<&Name> = st.presence.iter().filter(|u| self.shows(u)).collect();
        let size = format!("  size {}", st.presence.len());
        self.title(out, Structure::Presence, &size);
        let mut t = self.table(&["online", "members"]);
        let before = p.map(|p| Some(p.presence.len()));
        let newly: Vec<String> = shown
            .iter()
            .filter(|u| p.is_some_and(|p| !p.presence.contains(**u)))
            .map(|u| format!("{u} (new)"))
            .collect();
        let most = self.o.rows.max(NAMES_PER_CELL);
        // A compact column keeps the cell on one line: the names that fit,
        // and how many more (the table's borders and count take 14 columns).
        let fits = match self.column {
            Some(column) => (0..=most.min(shown.len()))
                .rev()
                .find(|&k| crate::terminal::width(&name_list(&shown, k)) + 14 <= column)
                .unwrap_or(0),
            None => most,
        };
        let mut members = name_list(&shown, fits);
        if !newly.is_empty() {
            let _ = write!(members, "\njust arrived: {}", newly.join(", "));
        }
        t.add_row(vec![self.count(shown.len(), before), Cell::new(members)]);
        self.finish(out, t, 0, "", Vec::new());
    }

    fn offline_messages(
        &self,
        out: &mut String,
        st: &StructuresSnapshot,
        p: Option<&StructuresSnapshot>,
    ) {
        self.title(out, Structure::OfflineMessages, "");
        // Users who resume (v1.1) have a released position: their deque is a
        // window of messages sent but not yet confirmed, so it says "held".
        let resuming = !st.released.is_empty();
        let mut header = vec!["user", if resuming { "queued/held" } else { "queued" }];
        if resuming {
            header.push("released ≤");
        }
        header.extend(if self.column.is_some() {
            ["front (next out)", "back (newest)"]
        } else {
            ["front (popped first)", "back (newest)"]
        });
        let mut t = self.table(&header);
        let empty = QueueSnapshot {
            len: 0,
            messages: Vec::new(),
            skipped: 0,
        };
        let mut users: Vec<&UserId> = st
            .offline_messages
            .keys()
            .chain(st.released.keys())
            .filter(|u| self.shows(u))
            .collect();
        users.sort_unstable();
        users.dedup();
        let rows: Vec<(&UserId, &QueueSnapshot)> = users
            .into_iter()
            .map(|u| (u, st.offline_messages.get(u).unwrap_or(&empty)))
            .collect();
        for (user, q) in rows.iter().take(self.o.rows) {
            let before = p.map(|p| p.offline_messages.get(*user).map(|q| q.len));
            let oldest = q
                .messages
                .first()
                .map(|m| self.preview(m))
                .unwrap_or_default();
            let newest = match q.messages.len() {
                0 => String::new(),
                1 => "(same)".into(),
                _ => q
                    .messages
                    .last()
                    .map(|m| self.preview(m))
                    .unwrap_or_default(),
            };
            let mut row = vec![
                self.key(user.as_str(), matches!(before, Some(None)) && q.len > 0),
                self.count(q.len, before),
            ];
            if resuming {
                let edge = st.released.get(*user).map(|e| format!("#{e}"));
                row.push(Cell::new(edge.unwrap_or_else(|| "-".into())));
            }
            row.extend([Cell::new(oldest), Cell::new(newest)]);
            t.add_row(row);
        }
        let gone = gone(
            p.map(|p| &p.offline_messages),
            &st.offline_messages,
            |u| self.shows(u),
            |u| format!("{u} (flushed)"),
        );
        let hidden = rows.len().saturating_sub(self.o.rows);
        self.finish(out, t, hidden, "queues", gone);
    }

    fn group_members(
        &self,
        out: &mut String,
        st: &StructuresSnapshot,
        p: Option<&StructuresSnapshot>,
    ) {
        self.title(out, Structure::GroupMembers, "");
        let mut t = self.table(&["group", "size", "members"]);
        let rows: Vec<_> = st
            .groups
            .iter()
            .filter(|(g, m)| match (&self.o.view.group, &self.o.view.user) {
                (Some(only), _) => *g == only,
                (None, Some(u)) => m.contains(u),
                (None, None) => true,
            })
            .collect();
        for (group, members) in rows.iter().take(self.o.rows) {
            let before = p.map(|p| p.groups.get(*group).map(Vec::len));
            t.add_row(vec![
                self.key(&format!("#{group}"), matches!(before, Some(None))),
                self.count(members.len(), before),
                Cell::new(name_list(members, NAMES_PER_CELL)),
            ]);
        }
        let only = self.o.view.group.as_ref();
        let gone = gone(
            p.map(|p| &p.groups),
            &st.groups,
            |g| only.is_none_or(|only| only == g),
            |g| format!("#{g} (empty, removed)"),
        );
        let hidden = rows.len().saturating_sub(self.o.rows);
        self.finish(out, t, hidden, "groups", gone);
    }

    fn blocked_users(
        &self,
        out: &mut String,
        st: &StructuresSnapshot,
        p: Option<&StructuresSnapshot>,
    ) {
        self.title(out, Structure::BlockedUsers, "");
        let mut t = self.table(&["user", "blocks", "whom"]);
        let rows: Vec<_> = st.blocked.iter().filter(|(u, _)| self.shows(u)).collect();
        for (user, whom) in rows.iter().take(self.o.rows) {
            let before = p.map(|p| p.blocked.get(*user).map(Vec::len));
            t.add_row(vec![
                self.key(user.as_str(), matches!(before, Some(None))),
                self.count(whom.len(), before),
                Cell::new(name_list(whom, NAMES_PER_CELL)),
            ]);
        }
        let hidden = rows.len().saturating_sub(self.o.rows);
        self.finish(out, t, hidden, "users", Vec::new());
    }

    fn structure(
        &self,
        structure: Structure,
        out: &mut String,
        st: &StructuresSnapshot,
        p: Option<&StructuresSnapshot>,
    ) {
        match structure {
            Structure::ActiveConnections => self.active_connections(out, st, p),
            Structure::Presence => self.presence(out, st, p),
            Structure::OfflineMessages => self.offline_messages(out, st, p),
            Structure::GroupMembers => self.group_members(out, st, p),
            Structure::BlockedUsers => self.blocked_users(out, st, p),
        }
    }

    fn operations(&self, out: &mut String, ops: &OpTable, previous: Option<&OpTable>) {
        if self.o.compact {
            return self.operations_compact(out, ops, previous);
        }
        let _ = writeln!(
            out,
            "\n{}",
            paint("operations", self.o.color, |t| t.bold().cyan())
        );
        let _ = writeln!(out, "{}", crate::core::ops::TIMING_NOTE);
        let _ = writeln!(out, "{}", crate::core::ops::COST_NOTE);
        let _ = writeln!(out, "{}", self.ops_table(ops, previous));
    }

    /// The operations as one row per structure: `get 39 O(1) · insert 7 O(1)*`,
    /// with `+N` for what grew since the last frame.
    fn operations_compact(&self, out: &mut String, ops: &OpTable, previous: Option<&OpTable>) {
        let title = paint("operations", self.o.color, |t| t.bold().cyan());
        let _ = writeln!(out, "{title}  count and cost of every call");
        let mut t = self.table(&["structure", "operations"]);
        let structures = Structure::ALL
            .into_iter()
            .filter(|s| self.o.view.only.is_none_or(|only| only == *s));
        for structure in structures {
            let cells: Vec<String> = ops
                .0
                .iter()
                // A live screen shows what has happened: calls never made wait.
                .filter(|r| r.structure == structure && r.count > 0)
                .map(|r| {
                    let grew = previous
                        .map(|p| r.count.saturating_sub(p.get(r.structure, r.op)))
                        .filter(|g| *g > 0)
                        .map(|g| format!(" (+{g})"))
                        .unwrap_or_default();
                    format!("{} {}{grew} {}", r.op.name(), r.count, r.complexity)
                })
                .collect();
            let cells = if cells.is_empty() {
                "(no calls yet)".to_string()
            } else {
                cells.join(" · ")
            };
            t.add_row(vec![Cell::new(structure.name()), Cell::new(cells)]);
        }
        let _ = writeln!(out, "{t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ChatCore, ConnId, CoreConfig, MemoryStructures};
    use crate::protocol::parse_request;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn doc(core: &ChatCore<MemoryStructures<ConnId>>) -> Inspection {
        Inspection {
            snapshot: core.snapshot().unwrap(),
            server: None,
        }
    }

    fn options() -> RenderOptions {
        RenderOptions {
            color: false,
            rows: 20,
            view: View::default(),
            source: "test".into(),
            compact: false,
            width: None,
        }
    }

    fn send(core: &mut ChatCore<MemoryStructures<ConnId>>, user: &str, conn: ConnId, json: &str) {
        core.handle(&n(user), &conn, parse_request(json).unwrap(), 1_000)
            .unwrap();
    }

    #[test]
    fn an_empty_structure_says_so_and_explanations_wrap_at_the_width() {
        let core = ChatCore::new(MemoryStructures::<ConnId>::default(), CoreConfig::default());
        let text = render(
            &doc(&core),
            None,
            &RenderOptions {
                width: Some(60),
                ..options()
            },
        );
        assert_eq!(text.matches("(empty)").count(), 4, "{text}");
        for line in text
            .lines()
            .filter(|l| !l.starts_with(['│', '┌', '└', '╞']))
        {
            assert!(
                crate::terminal::width(line) <= 60,
                "{line:?} is wider than 60"
            );
        }
    }

    /// `serve --dashboard` at 120x40: its frame is the render's two header
    /// lines, the event log, then the rest. Every structure and the
    /// operations must be in it, for a busy class, and no line wider than 120.
    #[test]
    fn the_dashboard_layout_shows_all_five_and_the_operations_in_120_by_40() {
        let mut core = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        let class = [
            "ana", "ben", "chen", "dara", "eli", "femi", "gus", "hana", "ivan", "jo",
        ];
        for (i, u) in class.iter().enumerate() {
            core.connect(&n(u), i as ConnId).unwrap();
            let group = format!(r#"{{"type":"group_join","group":"lab{}"}}"#, i % 3);
            send(&mut core, u, i as ConnId, &group);
        }
        for (i, absent) in ["omar", "pia", "quinn", "raj", "sara", "tom"]
            .iter()
            .enumerate()
        {
            for k in 0..3 {
                let dm = format!(
                    r#"{{"type":"message","to":"{absent}","text":"note {k} from a long lesson"}}"#
                );
                send(&mut core, class[i], i as ConnId, &dm);
            }
        }
        send(&mut core, "ben", 1, r#"{"type":"block","user":"eli"}"#);
        send(&mut core, "hana", 7, r#"{"type":"block","user":"tom"}"#);
        // Every kind of call made, so the operations rows are as long as they get.
        send(&mut core, "ben", 1, r#"{"type":"unblock","user":"eli"}"#);
        send(
            &mut core,
            "ana",
            0,
            r#"{"type":"group_message","group":"lab0","text":"hi"}"#,
        );
        send(
            &mut core,
            "jo",
            9,
            r#"{"type":"group_leave","group":"lab0"}"#,
        );
        core.disconnect(&n("jo"), 9, Vec::new()).unwrap();
        core.connect(&n("zed"), 99).unwrap();
        send(
            &mut core,
            "ana",
            0,
            r#"{"type":"message","to":"zed","text":"live"}"#,
        );
        core.connect(&n("omar"), 100).unwrap();
        let text = render(
            &doc(&core),
            None,
            &RenderOptions {
                rows: 4,
                compact: true,
                width: Some(120),
                ..options()
            },
        );
        // The dashboard adds a title and its event-log lines.
        let lines = text.lines().count() + 1 + crate::server::dashboard::LOG_LINES;
        assert!(lines <= 40, "the frame has {lines} lines:\n{text}");
        let names = Structure::ALL.map(Structure::name);
        for name in names.iter().chain(&["operations"]) {
            assert!(text.contains(name), "{name} is missing:\n{text}");
        }
        assert!(text.contains("push_back 18 O(1)*"), "{text}");
        assert!(text.contains("... and 7 more users"), "{text}");
        assert!(text.contains("✔ all 4 invariants hold"), "{text}");
        let widest = text.lines().map(crate::terminal::width).max().unwrap();
        assert!(widest <= 120, "a line is {widest} columns wide:\n{text}");
    }

    /// alice (2 devices) and bob online; carol has 2 queued; g1 = alice, bob; bob blocks mallory.
    fn classroom() -> ChatCore<MemoryStructures<ConnId>> {
        let mut core = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        core.connect(&n("alice"), 1).unwrap();
        core.connect(&n("alice"), 2).unwrap();
        core.connect(&n("bob"), 3).unwrap();
        send(
            &mut core,
            "alice",
            1,
            r#"{"type":"message","to":"carol","text":"first of two"}"#,
        );
        send(
            &mut core,
            "bob",
            3,
            r#"{"type":"message","to":"carol","text":"second"}"#,
        );
        send(
            &mut core,
            "alice",
            1,
            r#"{"type":"group_join","group":"g1"}"#,
        );
        send(&mut core, "bob", 3, r#"{"type":"group_join","group":"g1"}"#);
        send(&mut core, "bob", 3, r#"{"type":"block","user":"mallory"}"#);
        core
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
    }

    #[test]
    fn a_resuming_user_shows_held_messages_and_the_released_position() {
        use crate::core::Device;
        let mut core = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        let (alice, bob) = (
            Device {
                id: 1,
                resume: None,
            },
            Device {
                id: 2,
                resume: Some(0),
            },
        );
        core.connect(&n("alice"), alice).unwrap();
        core.connect(&n("bob"), bob).unwrap();
        for text in ["one", "two", "three"] {
            let json = format!(r#"{{"type":"message","to":"bob","text":"{text}"}}"#);
            core.handle(&n("alice"), &alice, parse_request(&json).unwrap(), 1_000)
                .unwrap();
        }
        let received = parse_request(r#"{"type":"received","id":1}"#).unwrap();
        core.handle(&n("bob"), &bob, received, 1_000).unwrap();
        let resumed = Inspection {
            snapshot: core.snapshot().unwrap(),
            server: None,
        };
        let text = render(&resumed, None, &options());
        assert!(text.contains("queued/held ┆ released ≤"), "{text}");
        let row = line_with(&text, "#2 from alice");
        assert!(row.starts_with("│ bob "), "{row}");
        assert!(
            row.contains("┆           2 ┆ #1"),
            "2 held, released up to #1: {row}"
        );
        assert!(row.contains("#3 from alice"), "the back: {row}");
        // Without anyone resuming, the table is as it always was.
        let plain = render(&doc(&classroom()), None, &options());
        assert!(!plain.contains("released ≤"), "{plain}");
    }

    #[test]
    fn claimed_names_are_listed_without_tokens() {
        let mut snapshot = doc(&classroom());
        let plain = render(&snapshot, None, &options());
        assert!(
            !plain.contains("name claims"),
            "no line while nothing is claimed"
        );
        snapshot.server = Some(crate::inspection::ServerInfo {
            claimed_names: vec![n("alice"), n("bob")],
            ..Default::default()
        });
        let text = render(&snapshot, None, &options());
        assert!(
            line_with(&text, "name claims").contains("2 claimed: alice, bob"),
            "{text}"
        );
        assert!(text
            .lines()
            .next()
            .unwrap()
            .ends_with("in memory: lost on restart"));
    }

    #[test]
    fn the_header_says_where_the_data_lives() {
        let mut snapshot = doc(&classroom());
        snapshot.server = Some(crate::inspection::ServerInfo {
            durable: true,
            data_path: Some("/srv/chat.db".into()),
            ..Default::default()
        });
        let text = render(&snapshot, None, &options());
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("durable: /srv/chat.db"),
            "{text}"
        );
        assert!(!text.contains("group commit"), "no disk line without stats");
        if let Some(info) = &mut snapshot.server {
            info.disk = Some(crate::inspection::DiskStats {
                changes: 300,
                commits: 12,
                largest_commit: 90,
                failing: None,
            });
        }
        let text = render(&snapshot, None, &options());
        assert!(
            line_with(&text, "group commit").contains(
                "300 change(s) in 12 commit(s), 25.0 per fsync on average, at most 90 in one"
            ),
            "{text}"
        );
    }

    #[test]
    fn every_structure_has_its_rows() {
        let text = render(&doc(&classroom()), None, &options());
        let alice = line_with(&text, "│ alice");
        assert!(alice.contains("┆       2 ┆ 1, 2"), "{alice}");
        assert!(line_with(&text, "│      2 ┆ alice, bob").contains("alice, bob"));
        let carol = line_with(&text, "│ carol");
        assert!(
            carol.contains("┆      2 ┆ #1 from alice") && carol.contains("#2 from bob"),
            "{carol}"
        );
        assert!(line_with(&text, "│ #g1").contains("┆    2 ┆ alice, bob"));
        assert!(line_with(&text, "│ bob  ┆").contains("mallory"));
        assert!(line_with(&text, "│ offline_messages   ┆ push_back").contains("┆     2 ┆"));
        assert!(text.contains("✔ presence == users with >= 1 connection"));
        for s in Structure::ALL {
            assert!(text.contains(s.rust_type()), "{}", s.name());
            assert!(text.contains(s.facts().why));
        }
    }

    #[test]
    fn changes_since_the_previous_frame_are_marked() {
        let mut core = classroom();
        let before = doc(&core);
        send(
            &mut core,
            "alice",
            1,
            r#"{"type":"message","to":"carol","text":"third"}"#,
        );
        send(
            &mut core,
            "alice",
            1,
            r#"{"type":"message","to":"dave","text":"hi"}"#,
        );
        core.connect(&n("erin"), 4).unwrap();
        core.disconnect(&n("bob"), 3, vec![]).unwrap();
        let text = render(&doc(&core), Some(&before), &options());
        assert!(line_with(&text, "│ carol").contains("3 (+1)"));
        assert!(line_with(&text, "│ dave (new)").contains("1"));
        assert!(line_with(&text, "│ erin (new)").contains("1"));
        assert!(text.contains("gone since the last frame: bob (offline)"));
        assert!(text.contains("just arrived: erin (new)"));
        assert!(line_with(&text, "│ offline_messages   ┆ push_back").contains("+2"));
    }

    #[test]
    fn long_tables_and_lists_are_cut_with_a_count() {
        let mut core = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        for i in 0..30u64 {
            let user = format!("u{i:02}");
            core.connect(&n(&user), i).unwrap();
            send(
                &mut core,
                &user,
                i,
                r#"{"type":"group_join","group":"big"}"#,
            );
        }
        let text = render(
            &doc(&core),
            None,
            &RenderOptions {
                rows: 5,
                ..options()
            },
        );
        assert!(text.contains("... and 25 more users"), "{text}");
        assert!(line_with(&text, "│ #big").contains("... and 22 more"));
    }

    #[test]
    fn filters_show_one_user_or_one_group() {
        let core = classroom();
        let only_bob = render(
            &doc(&core),
            None,
            &RenderOptions {
                view: View {
                    user: Some(n("bob")),
                    ..View::default()
                },
                ..options()
            },
        );
        assert!(!only_bob.contains("│ alice"), "{only_bob}");
        assert!(only_bob.contains("│ bob"));
        assert!(only_bob.contains("│ #g1"), "bob's groups are shown");
        assert!(!only_bob.contains("│ carol"));
        let g1 = render(
            &doc(&core),
            None,
            &RenderOptions {
                view: View {
                    group: Some(n("g1")),
                    ..View::default()
                },
                ..options()
            },
        );
        assert!(g1.contains("│ alice") && g1.contains("│ bob") && !g1.contains("│ carol"));
    }

    #[test]
    fn only_one_structure_shows_its_table_and_its_own_operations() {
        let core = classroom();
        for compact in [false, true] {
            let text = render(
                &doc(&core),
                None,
                &RenderOptions {
                    view: View {
                        only: Some(View::parse_structure("queue").unwrap()),
                        ..View::default()
                    },
                    compact,
                    width: Some(120),
                    ..options()
                },
            );
            assert!(text.contains("offline_messages"), "{text}");
            assert!(line_with(&text, "│ carol").contains('2'), "{text}");
            for other in [
                "active_connections",
                "presence",
                "group_members",
                "blocked_users",
            ] {
                let shown = text
                    .lines()
                    .any(|l| l.starts_with(other) || l.starts_with(&format!("│ {other}")));
                assert!(!shown, "{other} is shown:\n{text}");
            }
            assert!(text.contains("push_back"), "its operations: {text}");
        }
        assert_eq!(
            View::parse_structure("blocked_users"),
            Ok(Structure::BlockedUsers)
        );
        let wrong = View::parse_structure("stack").unwrap_err();
        assert!(wrong.contains("active_connections, presence"), "{wrong}");
    }

    #[test]
    fn a_broken_invariant_is_shown_as_a_failed_check() {
        let mut snapshot = doc(&classroom());
        let core = &mut snapshot.snapshot;
        core.structures.presence.push(n("ghost"));
        core.invariants = core.structures.invariants();
        let text = render(&snapshot, None, &options());
        assert!(text.contains("✘ presence == users with >= 1 connection: online without a connection: [\"ghost\"]"), "{text}");
    }
}
