//! The TUI's state and what keys do to it, without a terminal: `update` takes a key
//! and returns what the driver must do ([`Action`]), `view.rs` draws the state. Tests
//! drive it directly and render it into ratatui's `TestBackend`.

use std::collections::BTreeMap;

use chatr_client::room::RoomId;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use uuid::Uuid;

/// A conversation: with one contact, or in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Conv {
    Contact(Uuid),
    Room(RoomId),
}

/// A contact in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContactRow {
    pub(crate) uuid: Uuid,
    pub(crate) alias: String,
    /// "available", "away: lunch", "offline", "unknown", "not shared".
    pub(crate) presence: String,
    pub(crate) online: bool,
}

/// A room in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomRow {
    pub(crate) room: RoomId,
    pub(crate) name: String,
    /// Members here / current members (us excluded).
    pub(crate) here: usize,
    pub(crate) members: usize,
}

/// What the driver must do for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    SendChat(Uuid, String),
    SendRoom(RoomId, String),
    Invite(RoomId, String),
    Leave(RoomId),
    Create(String),
    Quit,
}

/// Everything on screen.
#[derive(Debug, Default)]
pub(crate) struct App {
    pub(crate) me: String,
    /// "online", "connecting…", "offline: …".
    pub(crate) session: String,
    pub(crate) contacts: Vec<ContactRow>,
    pub(crate) rooms: Vec<RoomRow>,
    /// Index into contacts then rooms.
    pub(crate) selected: usize,
    pub(crate) input: String,
    pub(crate) history: BTreeMap<Conv, Vec<String>>,
    /// Lines for things that belong to no conversation (errors, invitations).
    pub(crate) notices: Vec<String>,
    /// Link path of each peer we have a link with ("direct (LAN)", "relayed: …").
    pub(crate) paths: BTreeMap<Uuid, String>,
    pub(crate) help: bool,
}

impl App {
    /// The conversation selected in the sidebar.
    pub(crate) fn current(&self) -> Option<Conv> {
        if let Some(c) = self.contacts.get(self.selected) {
            return Some(Conv::Contact(c.uuid));
        }
        self.rooms
            .get(self.selected.checked_sub(self.contacts.len())?)
            .map(|r| Conv::Room(r.room))
    }

    fn entries(&self) -> usize {
        self.contacts.len() + self.rooms.len()
    }

    /// Adds a line to a conversation's history (the session's history: kept in memory).
    pub(crate) fn push(&mut self, conv: Conv, line: String) {
        self.history.entry(conv).or_default().push(line);
    }

    /// A line outside any conversation.
    pub(crate) fn notice(&mut self, line: String) {
        self.notices.push(line);
        if self.notices.len() > 100 {
            self.notices.remove(0);
        }
    }

    /// Selects `conv` if it is in the sidebar.
    #[cfg(test)]
    pub(crate) fn select(&mut self, conv: Conv) {
        let index = match conv {
            Conv::Contact(u) => self.contacts.iter().position(|c| c.uuid == u),
            Conv::Room(r) => self
                .rooms
                .iter()
                .position(|x| x.room == r)
                .map(|i| i + self.contacts.len()),
        };
        if let Some(i) = index {
            self.selected = i;
        }
    }

    /// What a key does.
    pub(crate) fn key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if self.help {
            // Any key closes the help.
            self.help = false;
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('c' | 'q') if ctrl => return vec![Action::Quit],
            KeyCode::F(1) => self.help = true,
            KeyCode::Char('?') if self.input.is_empty() => self.help = true,
            KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Tab if self.entries() > 0 => {
                self.selected = (self.selected + 1) % self.entries();
            }
            KeyCode::BackTab if self.entries() > 0 => {
                let n = self.entries();
                self.selected = (self.selected + n - 1) % n;
            }
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Esc => self.input.clear(),
            KeyCode::Char(c) if !ctrl => self.input.push(c),
            KeyCode::Enter => return self.enter(),
            _ => {}
        }
        Vec::new()
    }

    fn enter(&mut self) -> Vec<Action> {
        let line = std::mem::take(&mut self.input);
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim().to_owned();
        let current = self.current();
        match (cmd, current) {
            ("/quit", _) => vec![Action::Quit],
            ("/help", _) => {
                self.help = true;
                Vec::new()
            }
            ("/create", _) if !rest.is_empty() => vec![Action::Create(rest)],
            ("/invite", Some(Conv::Room(room))) if !rest.is_empty() => {
                vec![Action::Invite(room, rest)]
            }
            ("/leave", Some(Conv::Room(room))) => vec![Action::Leave(room)],
            (c, _) if c.starts_with('/') => {
                self.notice(format!(
                    "unknown command {c}; press F1 for help (in a room: /invite CONTACT, /leave; anywhere: /create NAME, /quit)"
                ));
                Vec::new()
            }
            (_, Some(Conv::Contact(uuid))) => vec![Action::SendChat(uuid, line.to_owned())],
            (_, Some(Conv::Room(room))) => vec![Action::SendRoom(room, line.to_owned())],
            (_, None) => {
                self.notice("select a contact or a room first (Up/Down)".to_owned());
                Vec::new()
            }
        }
    }
}

/// The keys, for the help box.
pub(crate) const HELP: &[(&str, &str)] = &[
    ("Up / Down, Tab", "choose a contact or a room"),
    ("type, Enter", "send to the chosen contact or room"),
    ("/create NAME", "create a room"),
    ("/invite CONTACT", "invite a contact to the chosen room"),
    ("/leave", "leave the chosen room for good"),
    ("Esc", "clear the input line"),
    ("F1 or ?", "this help (any key closes it)"),
    (
        "Ctrl-C, Ctrl-Q, /quit",
        "quit (you stay a member of your rooms)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn app() -> App {
        App {
            contacts: vec![ContactRow {
                uuid: Uuid::from_bytes([1; 16]),
                alias: "bob".into(),
                presence: "available".into(),
                online: true,
            }],
            rooms: vec![RoomRow {
                room: RoomId([2; 16]),
                name: "friends".into(),
                here: 1,
                members: 3,
            }],
            ..App::default()
        }
    }

    fn type_line(app: &mut App, text: &str) -> Vec<Action> {
        for c in text.chars() {
            app.key(key(KeyCode::Char(c)));
        }
        app.key(key(KeyCode::Enter))
    }

    #[test]
    fn typing_sends_to_the_selected_conversation() {
        let mut app = app();
        assert_eq!(
            type_line(&mut app, "hi bob"),
            vec![Action::SendChat(Uuid::from_bytes([1; 16]), "hi bob".into())]
        );
        app.key(key(KeyCode::Down));
        assert_eq!(app.current(), Some(Conv::Room(RoomId([2; 16]))));
        assert_eq!(
            type_line(&mut app, "hello all"),
            vec![Action::SendRoom(RoomId([2; 16]), "hello all".into())]
        );
        assert_eq!(
            type_line(&mut app, "/invite carol"),
            vec![Action::Invite(RoomId([2; 16]), "carol".into())]
        );
        assert_eq!(
            type_line(&mut app, "/create work"),
            vec![Action::Create("work".into())]
        );
        assert!(type_line(&mut app, "/nope").is_empty());
        assert!(app.notices.last().unwrap().contains("unknown command"));
        // Down wraps round.
        app.key(key(KeyCode::Down));
        assert_eq!(app.selected, 0);
    }

    #[test]
    fn help_opens_and_any_key_closes_it_and_ctrl_c_quits() {
        let mut app = app();
        app.key(key(KeyCode::Char('?')));
        assert!(app.help);
        assert!(app.key(key(KeyCode::Char('x'))).is_empty());
        assert!(!app.help);
        assert!(app.input.is_empty(), "the closing key is not typed");
        assert_eq!(
            app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            vec![Action::Quit]
        );
    }
}
