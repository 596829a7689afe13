//! `contacts add|list|remove`: the address book.

use chatr_client::contacts::Contact;
use chatr_client::identity::{parse_public_key, public_key_base64};
use clap::Subcommand;
use uuid::Uuid;

use super::{CliError, Globals, link, setup};

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
    /// Add a peer; its key is fetched from the registry and pinned unless --key is given
    Add {
        /// The peer's UUID
        uuid: String,
        /// The name you will use for it
        alias: String,
        /// The peer's public key (base64), e.g. from `chatr whoami` on their machine
        #[arg(long)]
        key: Option<String>,
        /// Do not share presence with this contact (neither of you sees the other online)
        #[arg(long)]
        no_presence: bool,
    },
    /// List the address book, with who is online (asks the server unless --offline)
    List {
        /// Only the book: do not log in to learn who is online
        #[arg(long)]
        offline: bool,
    },
    /// Share presence with a contact again (`on`) or stop sharing it (`off`)
    Presence {
        /// Alias or UUID
        name: String,
        /// on or off
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Remove a contact
    Remove {
        /// Alias or UUID
        name: String,
    },
}

pub(crate) async fn run(g: &Globals, cmd: ContactsCommand) -> Result<(), CliError> {
    let path = g.home.contacts_path();
    match cmd {
        ContactsCommand::Add {
            uuid,
            alias,
            key,
            no_presence,
        } => {
            let uuid = Uuid::parse_str(uuid.trim())
                .map_err(|_| CliError::Usage(format!("{uuid:?} is not a UUID")))?;
            let mut book = g.home.contacts()?;
            // Refuse duplicates before asking the network.
            if let Some(c) = book.by_uuid(&uuid) {
                return Err(CliError::Usage(format!(
                    "{uuid} is already a contact (as {:?}); remove it first to change it",
                    c.alias
                )));
            }
            let (key, source) = match key {
                Some(b64) => (
                    parse_public_key(&b64).ok_or_else(|| {
                        CliError::Usage(format!("{b64:?} is not a base64 ed25519 public key"))
                    })?,
                    "given",
                ),
                None => (setup::lookup_peer(g, uuid).await?, "from the registry"),
            };
            book.add(Contact {
                uuid,
                alias: alias.clone(),
                key,
                presence: !no_presence,
            })?;
            book.save(&path)?;
            println!(
                "added {alias} ({uuid}), key {} ({source}){}",
                public_key_base64(&key),
                if no_presence {
                    "; presence not shared"
                } else {
                    ""
                }
            );
        }
        ContactsCommand::List { offline } => {
            let book = g.home.contacts()?;
            if book.is_empty() {
                eprintln!("no contacts yet; add one with `chatr contacts add <uuid> <alias>`");
                return Ok(());
            }
            let view = if offline {
                None
            } else {
                Some(link::fetch_presence(g).await)
            };
            for c in book.iter() {
                let state = match &view {
                    None => String::new(),
                    Some(Err(_)) => "\tunknown".to_owned(),
                    Some(Ok(_)) if !c.presence => "\tnot shared".to_owned(),
                    Some(Ok(view)) => format!("\t{}", link::describe_presence(view, &c.uuid)),
                };
                println!(
                    "{}\t{}\t{}{state}",
                    c.alias,
                    c.uuid,
                    public_key_base64(&c.key)
                );
            }
            if let Some(Err(why)) = view {
                eprintln!("(who is online is unknown: {why})");
            }
        }
        ContactsCommand::Presence { name, state } => {
            let mut book = g.home.contacts()?;
            book.set_presence(&name, state == "on")?;
            book.save(&path)?;
            println!(
                "presence with {name} is now {}",
                if state == "on" {
                    "shared"
                } else {
                    "not shared"
                }
            );
        }
        ContactsCommand::Remove { name } => {
            let mut book = g.home.contacts()?;
            let removed = book.remove(&name)?;
            book.save(&path)?;
            println!("removed {} ({})", removed.alias, removed.uuid);
        }
    }
    Ok(())
}
