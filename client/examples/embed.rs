//! Embedding the Chatr client library: an echo bot.
//!
//! ```text
//! cargo run -p chatr-client --example embed                 # self-contained: local server + bot + a user
//! cargo run -p chatr-client --example embed -- --home DIR   # run the bot with a `chatr init`ed home
//! ```
//!
//! The bot stays online, accepts link requests from its contacts (keys pinned
//! in the home's address book), and echoes every chat message back. The
//! self-contained mode also plays the user: it asks the bot for a link and
//! sends it two messages.

use std::time::Duration;

use anyhow::Context as _;
use chatr_client::config::{HostPort, Trust};
use chatr_client::home::Home;
use chatr_client::identity::Identity;
use chatr_client::link::chat::{ChatProfile, ChatSession, Status};
use chatr_client::link::{PeerLink, StreamKind};
use chatr_client::rest::RegistryClient;
use chatr_client::{Client, ClientOptions};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

fn profile(alias: &str) -> ChatProfile {
    ChatProfile {
        alias: alias.into(),
        status: Status::Available,
        status_message: "I repeat what you say".into(),
    }
}

/// Serves one link: answers every chat stream by echoing messages.
async fn echo(link: PeerLink) -> anyhow::Result<()> {
    while let Ok(stream) = link.accept_stream().await {
        if stream.kind() != StreamKind::Chat {
            continue;
        }
        let mut chat = ChatSession::start(stream, &profile("echo-bot")).await?;
        while let Some(packet) = chat.recv().await? {
            if let Some(text) = packet.message {
                chat.send_message(&format!("echo: {text}")).await?;
            }
        }
    }
    Ok(())
}

/// Accepts requests forever; `known` says which key a peer must prove.
async fn run_bot(bot: Client, known: impl Fn(Uuid) -> Option<VerifyingKey>) {
    while let Some(request) = bot.next_request().await {
        let Some(key) = known(request.peer()) else {
            let _ = request.deny().await;
            continue;
        };
        match request.accept(key).await {
            Ok((link, report)) => {
                println!(
                    "[bot] linked with {} via {} in {:?}",
                    report.peer, report.remote, report.punch_time
                );
                tokio::spawn(echo(link));
            }
            Err(e) => println!("[bot] link failed: {e}"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice()
        && flag == "--home"
    {
        // The bot on a real deployment: everything comes from the home.
        let home = Home::new(dir);
        let book = home.contacts()?;
        let bot = Client::start(ClientOptions::from_home(&home)?).await?;
        bot.wait_online(Duration::from_secs(15)).await?;
        println!("[bot] online as {}; Ctrl-C to stop", bot.uuid());
        tokio::select! {
            _ = run_bot(bot.clone(), |peer| book.by_uuid(&peer).map(|c| c.key)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        bot.shutdown().await;
        return Ok(());
    }
    self_contained().await
}

/// A local server, the bot, and a user talking to it.
async fn self_contained() -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("chatr-embed-{}", Uuid::new_v4()));
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        chatr_server::start(chatr_server::ServerConfig::for_tests(&data), stop.clone()).await?;
    let trust = Trust::Fingerprint(server.cert_fingerprint().parse()?);
    let tls = chatr_client::trust::client_config(&trust, &Home::new(&data))?;
    let registry = RegistryClient::new(
        format!("https://{}", server.api_addr()).parse()?,
        tls.clone(),
    );
    let connect = HostPort {
        host: server.connect_addr().ip().to_string(),
        port: server.connect_addr().port(),
    };

    let (bot_id, user_id) = (Identity::generate(), Identity::generate());
    registry.register(&bot_id, None).await?;
    registry.register(&user_id, None).await?;
    let bot = Client::start(ClientOptions::new(
        bot_id.clone(),
        connect.clone(),
        tls.clone(),
    ))
    .await?;
    let user = Client::start(ClientOptions::new(user_id.clone(), connect, tls)).await?;
    bot.wait_online(Duration::from_secs(10)).await?;
    user.wait_online(Duration::from_secs(10)).await?;

    let (user_uuid, user_key) = (user_id.uuid(), user_id.verifying_key());
    tokio::spawn(run_bot(bot.clone(), move |peer| {
        (peer == user_uuid).then_some(user_key)
    }));

    let (link, report) = user
        .request_link(bot_id.uuid(), bot_id.verifying_key())
        .await
        .context("linking to the bot")?;
    println!(
        "[user] linked to the bot: {}, {} probes",
        report.describe(),
        report.probes_sent
    );
    let stream = link.open(StreamKind::Chat).await?;
    let mut chat = ChatSession::start(stream, &profile("user")).await?;
    for text in ["hello", "are you there?"] {
        chat.send_message(text).await?;
        if let Some(reply) = chat.recv().await? {
            println!(
                "[user] sent {text:?}, got {:?}",
                reply.message.unwrap_or_default()
            );
        }
    }
    let _ = chat.close().await;
    user.shutdown().await;
    bot.shutdown().await;
    stop.cancel();
    server.join().await;
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
