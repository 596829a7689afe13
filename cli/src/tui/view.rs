//! Drawing the [`App`]: contacts and rooms on the left, the chosen conversation on the
//! right with the input line under it, the session and link path in the status bar,
//! and the help box over everything when open.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};

use super::app::{App, Conv, HELP};

pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let [main, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    let [side, right] =
        Layout::horizontal([Constraint::Length(32), Constraint::Min(20)]).areas(main);
    let [history, input] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(right);

    draw_sidebar(frame, app, side);
    draw_history(frame, app, history);
    let prompt = Paragraph::new(format!("> {}", app.input)).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" message (F1: help) "),
    );
    frame.render_widget(prompt, input);
    frame.render_widget(Paragraph::new(status_line(app)), status);
    if app.help {
        draw_help(frame, frame.area());
    }
}

fn draw_sidebar(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let mut items: Vec<ListItem<'_>> = Vec::new();
    for c in &app.contacts {
        let dot = if c.online { "●" } else { "○" };
        items.push(ListItem::new(format!("{dot} {} — {}", c.alias, c.presence)));
    }
    for r in &app.rooms {
        items.push(ListItem::new(format!(
            "# {} ({}/{} here)",
            r.name, r.here, r.members
        )));
    }
    let mut state = ListState::default();
    if !items.is_empty() {
        state.select(Some(app.selected.min(items.len() - 1)));
    }
    let list = List::new(items)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {} — contacts & rooms ", app.me)),
        )
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_history(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let (title, lines): (String, Vec<String>) = match app.current() {
        Some(conv) => {
            let title = match conv {
                Conv::Contact(u) => app
                    .contacts
                    .iter()
                    .find(|c| c.uuid == u)
                    .map_or_else(|| "chat".to_owned(), |c| format!(" chat with {} ", c.alias)),
                Conv::Room(r) => app
                    .rooms
                    .iter()
                    .find(|x| x.room == r)
                    .map_or_else(|| "room".to_owned(), |x| format!(" room {} ", x.name)),
            };
            let mut lines = app.history.get(&conv).cloned().unwrap_or_default();
            lines.extend(
                app.notices
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .map(|n| format!("! {n}")),
            );
            (title, lines)
        }
        None => (
            " chatr ".to_owned(),
            app.notices
                .iter()
                .cloned()
                .chain([
                    "No contacts or rooms yet: add contacts with `chatr contacts add`,".to_owned(),
                    "or create a room here with /create NAME.".to_owned(),
                ])
                .collect(),
        ),
    };
    // Show the end of the history that fits.
    let height = usize::from(area.height.saturating_sub(2));
    let start = lines.len().saturating_sub(height);
    let text: Vec<Line<'_>> = lines
        .get(start..)
        .unwrap_or_default()
        .iter()
        .map(|l| Line::from(l.clone()))
        .collect();
    let p = Paragraph::new(text)
        .wrap(Wrap { trim: false })
        .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(p, area);
}

fn status_line(app: &App) -> Line<'static> {
    let link = match app.current() {
        Some(Conv::Contact(u)) => app
            .paths
            .get(&u)
            .map_or_else(|| "no link yet".to_owned(), |p| format!("link: {p}")),
        Some(Conv::Room(r)) => {
            app.rooms
                .iter()
                .find(|x| x.room == r)
                .map_or_else(String::new, |x| {
                    let paths: Vec<&String> = app.paths.values().collect();
                    let relayed = paths.iter().filter(|p| p.starts_with("relayed")).count();
                    format!(
                        "{} of {} members here; links: {} direct, {relayed} relayed",
                        x.here,
                        x.members,
                        paths.len() - relayed
                    )
                })
        }
        None => String::new(),
    };
    Line::from(vec![
        Span::styled(
            format!(" {} ", app.session),
            Style::default().add_modifier(Modifier::REVERSED),
        ),
        Span::raw(format!(" {link}")),
    ])
}

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(64);
    let height = area.height.min(u16::try_from(HELP.len()).unwrap_or(8) + 4);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, v)| Line::from(format!("{k:<22} {v}")))
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use chatr_client::room::RoomId;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use uuid::Uuid;

    use super::super::app::{ContactRow, RoomRow};
    use super::*;

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn contacts_rooms_history_path_and_help_are_drawn() {
        let bob = Uuid::from_bytes([1; 16]);
        let room = RoomId([2; 16]);
        let mut app = App {
            me: "alice".into(),
            session: "online".into(),
            contacts: vec![
                ContactRow {
                    uuid: bob,
                    alias: "bob".into(),
                    presence: "away: lunch".into(),
                    online: true,
                },
                ContactRow {
                    uuid: Uuid::from_bytes([3; 16]),
                    alias: "carol".into(),
                    presence: "offline".into(),
                    online: false,
                },
            ],
            rooms: vec![RoomRow {
                room,
                name: "friends".into(),
                here: 2,
                members: 3,
            }],
            ..App::default()
        };
        app.push(Conv::Contact(bob), "bob: hello".into());
        app.paths.insert(bob, "direct (internet), 3 ms".into());
        let s = screen(&app);
        for want in [
            "● bob — away: lunch",
            "○ carol — offline",
            "# friends (2/3 here)",
            "chat with bob",
            "bob: hello",
            "online",
            "link: direct (internet), 3 ms",
        ] {
            assert!(s.contains(want), "{want:?} missing from:\n{s}");
        }
        app.select(Conv::Room(room));
        app.push(Conv::Room(room), "carol: hi all".into());
        let s = screen(&app);
        assert!(
            s.contains("room friends") && s.contains("carol: hi all"),
            "{s}"
        );
        assert!(s.contains("2 of 3 members here"), "{s}");
        assert!(
            !s.contains("bob: hello"),
            "another conversation's history: {s}"
        );
        app.help = true;
        let s = screen(&app);
        assert!(s.contains(" keys ") && s.contains("/invite CONTACT"), "{s}");
    }
}
