//! The `chat` command-line client: an interactive chat, and subcommands for scripts.

use anyhow::{Context, Result, anyhow, bail};
use chat_client::proto::{self as v1, ConversationKind};
use chat_client::{Client, Push, TlsClient, format_delivery};
use clap::{Parser, Subcommand};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::UnboundedReceiver;

/// Chat with users of a chat cluster.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Node address host:port (repeatable: the next is tried when one fails).
    #[arg(long = "server", default_value = "127.0.0.1:7400", global = true)]
    servers: Vec<String>,
    /// Username to log in as.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Connect over TLS, trusting the certificates in this PEM file.
    #[arg(long, global = true)]
    ca: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against (default: the host of --server).
    #[arg(long, global = true, requires = "ca")]
    tls_name: Option<String>,
    /// Password (prompted for when missing and needed).
    #[arg(long, global = true, env = "CHAT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The name of this device, shown by `chat devices` for the token a login makes
    /// (at most 64 bytes).
    #[arg(long, global = true, default_value = "chat cli")]
    device: String,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  chat register alice --password secret
  chat --user alice --password secret                 (interactive)
  chat --user alice --password secret send bob \"hi\"
  chat --user bob --password pw recv --wait 5
  chat --user alice --password secret group-create rust
  chat --user alice --password secret group-send rust \"hello all\"
  chat --user alice --password secret online
  chat --user alice --password secret --device \"laptop\" devices
  chat --user alice --password secret nodes";

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account.
    #[command(after_help = "Example:\n  chat --server 127.0.0.1:7400 register alice --password wonderland")]
    Register {
        /// The new username (1 to 32 of A-Z a-z 0-9 _ . -).
        name: String,
    },
    /// Send a private message and wait for the server's acknowledgement.
    #[command(after_help = "Example:\n  chat --user alice --password wonderland send bob \"see you at 5\"")]
    Send {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
        /// The id of the message this one answers.
        #[arg(long, value_name = "MESSAGE_ID")]
        reply_to: Option<String>,
    },
    /// Answer a message in its own conversation, private or group (the message is
    /// looked up among yours: your inbox, the conversation's history).
    #[command(after_help = "Example:\n  chat --user bob --password builder reply p:bob:3 \"yes, at 5\"")]
    Reply {
        /// The id of the message to answer (as `send`, `recv` and `history` print it).
        message_id: String,
        /// Text.
        text: String,
    },
    /// Send a file to a user or a group (#GROUP): uploaded (nothing is sent when the
    /// cluster has the same bytes), then a message carries it. Prints the message id
    /// and the file's blob id.
    #[command(
        after_help = "Example:\n  chat --user alice --password wonderland send-file bob report.pdf\n  chat --user alice --password wonderland send-file '#rust' photo.png --text \"look\""
    )]
    SendFile {
        /// Recipient: USER or #GROUP.
        to: String,
        /// The file.
        path: std::path::PathBuf,
        /// Text to go with it.
        #[arg(long, default_value = "")]
        text: String,
        /// Its MIME type (default: guessed from the name).
        #[arg(long)]
        mime: Option<String>,
    },
    /// Download a file (a blob id as `recv` and `send-file` print it); resumes into a
    /// partial file at PATH.
    #[command(
        after_help = "Example:\n  chat --user bob --password builder download 3f2a... --out report.pdf"
    )]
    Download {
        /// The file's blob id.
        blob_id: String,
        /// Where to write it.
        #[arg(long, value_name = "PATH")]
        out: std::path::PathBuf,
    },
    /// Edit a message you sent (within the server's edit window, 24 h by default).
    #[command(
        after_help = "Example:\n  chat --user alice --password wonderland edit p:bob:3 \"see you at 6\""
    )]
    Edit {
        /// The message's id (as `send`, `recv` and `history` print it).
        message_id: String,
        /// The new text.
        text: String,
    },
    /// Delete a message for everyone (yours; in a group, owners and admins may
    /// recall any).
    #[command(
        visible_alias = "delete",
        after_help = "Example:\n  chat --user alice --password wonderland delete p:bob:3"
    )]
    Recall {
        /// The message's id.
        message_id: String,
    },
    /// React to a message with an emoji (one per user: a new one replaces yours; an
    /// empty one removes it).
    #[command(after_help = "Example:\n  chat --user bob --password builder react p:bob:3 👍")]
    React {
        /// The message's id.
        message_id: String,
        /// The emoji; "" removes your reaction.
        emoji: String,
    },
    /// Create a group (you become its owner and first member).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-create rust --private")]
    GroupCreate {
        /// Group name.
        group: String,
        /// Invitation only; new members do not see the history from before they joined.
        #[arg(long)]
        private: bool,
        /// Its title.
        #[arg(long, default_value = "")]
        title: String,
    },
    /// Invite USER to a group (admins, for a private group); USER accepts with group-accept.
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-invite rust bob")]
    GroupInvite {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Remove member USER from a group (admins).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-kick rust bob")]
    GroupKick {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Ban USER from a group: removed, and kept out until unbanned (admins).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-ban rust mallory")]
    GroupBan {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Unban USER (admins).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-unban rust mallory")]
    GroupUnban {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Hand the group over to member USER (owner); you stay as an admin.
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-transfer rust bob")]
    GroupTransfer {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Accept an invitation to a group (the same as group-join).
    #[command(after_help = "Example:\n  chat --user bob --password builder group-accept rust")]
    GroupAccept {
        /// Group name.
        group: String,
    },
    /// Make member USER an admin or a member again (owner).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-role rust bob admin")]
    GroupRole {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
        /// `admin` or `member`.
        #[arg(value_parser = ["admin", "member"])]
        role: String,
    },
    /// Change a group's title, topic, or whether new members see its history (admins).
    #[command(
        after_help = "Example:\n  chat --user alice --password wonderland group-set rust --topic \"release on friday\""
    )]
    GroupSet {
        /// Group name.
        group: String,
        /// New title.
        #[arg(long)]
        title: Option<String>,
        /// New topic.
        #[arg(long)]
        topic: Option<String>,
        /// Whether new members see the history from before they joined.
        #[arg(long)]
        history: Option<bool>,
    },
    /// Delete a group (owner).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland group-delete rust")]
    GroupDelete {
        /// Group name.
        group: String,
    },
    /// Print a group's settings, then its members with their roles, one per line.
    #[command(after_help = "Example:\n  chat --user bob --password builder group-info rust")]
    GroupInfo {
        /// Group name.
        group: String,
    },

    /// Join a group.
    #[command(after_help = "Example:\n  chat --user bob --password builder group-join rust")]
    GroupJoin {
        /// Group name.
        group: String,
    },
    /// Leave a group.
    #[command(after_help = "Example:\n  chat --user bob --password builder group-leave rust")]
    GroupLeave {
        /// Group name.
        group: String,
    },
    /// Send a message to a group.
    #[command(
        after_help = "Example:\n  chat --user alice --password wonderland group-send rust \"release is out\""
    )]
    GroupSend {
        /// Group name.
        group: String,
        /// Text.
        text: String,
        /// The id of the message this one answers.
        #[arg(long, value_name = "MESSAGE_ID")]
        reply_to: Option<String>,
    },
    /// Print messages (offline ones first, then live ones) for SECS seconds.
    #[command(after_help = "Example:\n  chat --user bob --password builder recv --wait 30")]
    Recv {
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 5)]
        wait: u64,
    },
    /// Print online users, one per line.
    #[command(after_help = "Example:\n  chat --user bob --password builder online")]
    Online,
    /// Print your groups, one per line.
    #[command(after_help = "Example:\n  chat --user bob --password builder groups")]
    Groups,
    /// Print a group's members, one per line.
    #[command(after_help = "Example:\n  chat --user bob --password builder members rust")]
    Members {
        /// Group name.
        group: String,
    },
    /// Ask USER to be your contact (accepts at once if USER asked you first).
    #[command(after_help = "Example:\n  chat --user alice --password wonderland contact-add bob")]
    ContactAdd {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Accept USER's contact request.
    #[command(after_help = "Example:\n  chat --user bob --password builder contact-accept alice")]
    ContactAccept {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Decline USER's contact request.
    #[command(after_help = "Example:\n  chat --user bob --password builder contact-decline alice")]
    ContactDecline {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Remove USER from your contacts, or withdraw a request to or from USER.
    #[command(after_help = "Example:\n  chat --user bob --password builder contact-remove alice")]
    ContactRemove {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Print your contacts and requests, one per line: `NAME incoming|outgoing`, or
    /// `NAME contact online|offline[, last seen TIME]`.
    #[command(after_help = "Example:\n  chat --user bob --password builder contacts")]
    Contacts,
    /// Block USER: its private messages are refused and its contact requests dropped.
    #[command(after_help = "Example:\n  chat --user bob --password builder block mallory")]
    Block {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Unblock USER.
    #[command(after_help = "Example:\n  chat --user bob --password builder unblock mallory")]
    Unblock {
        /// Username.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Print the users you block, one per line.
    #[command(after_help = "Example:\n  chat --user bob --password builder blocks")]
    Blocks,
    /// Show or change who may send you private messages, and whether your last seen
    /// time is hidden.
    #[command(after_help = "Example:\n  chat --user bob --password builder privacy --messages contacts")]
    Privacy {
        /// `everyone` or `contacts` (contacts only).
        #[arg(long, value_parser = ["everyone", "contacts"])]
        messages: Option<String>,
        /// Hide (true) or show (false) when you were last online.
        #[arg(long)]
        hide_last_seen: Option<bool>,
    },
    /// Print the cluster's nodes: name, client address, up or down, sessions.
    #[command(
        after_help = "Example:\n  chat --server 127.0.0.1:7401 --server 127.0.0.1:7402 --user bob --password builder nodes"
    )]
    Nodes,
    /// Change your password (--password is the old one; the new one is asked for
    /// unless given). Your other sessions are closed.
    #[command(after_help = "Example:\n  chat --user bob --password builder passwd")]
    Passwd {
        /// The new password (asked for if not given).
        #[arg(long)]
        new_password: Option<String>,
    },
    /// Print your devices (one per token, the most recently used first): ID  NAME
    /// created TIME  last login TIME  expires TIME, and `(this device)` for this one.
    #[command(after_help = "Example:\n  chat --user bob --password builder --device \"work laptop\" devices")]
    Devices,
    /// Log device ID (as `chat devices` prints it) out: its token is revoked and its
    /// sessions on every node are closed; your other devices stay logged in.
    #[command(after_help = "Example:\n  chat --user bob --password builder logout-device 3f2a9c0d11e4b765")]
    LogoutDevice {
        /// The device's id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Print your sessions on every node that answers: NODE  ADDRESS  since TIME
    /// device ID, and `(this session)` for this one.
    #[command(after_help = "Example:\n  chat --user bob --password builder sessions")]
    Sessions,
    /// Log out every device: every token is revoked and every session closed.
    #[command(after_help = "Example:\n  chat --user bob --password builder logout-everywhere")]
    LogoutEverywhere,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  chat completions bash > /etc/bash_completion.d/chat")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the history of a conversation: USER or #GROUP.
    #[command(
        after_help = "Examples:\n  chat --user bob --password builder history alice\n  chat --user bob --password builder history '#rust'"
    )]
    History {
        /// A username, or a group name prefixed with '#'.
        with: String,
    },
    /// Operators: remove a node that will never come back (nodes running
    /// `cluster.consensus`); its replicas are made again on the others. Talks to a
    /// node's admin endpoint, not to --server.
    #[command(after_help = "Example:\n  chat remove-node node-3 --admin 127.0.0.1:7600")]
    RemoveNode {
        /// The dead node's name.
        name: String,
        /// The admin endpoint (host:port) of any live node.
        #[arg(long, default_value = "127.0.0.1:7600")]
        admin: String,
    },
    /// Operators: take a live node out of the cluster for good: its replicas move to
    /// the others first, then it removes itself (its log says when; then stop it).
    /// Talks to that node's admin endpoint.
    #[command(after_help = "Example:\n  chat leave --admin 127.0.0.1:7603")]
    Leave {
        /// The admin endpoint (host:port) of the node that leaves.
        #[arg(long, default_value = "127.0.0.1:7600")]
        admin: String,
    },
    /// Operators: user and group administration through a node's admin endpoint,
    /// with its admin token (--token or CHAT_ADMIN_TOKEN).
    #[command(
        after_help = "Examples:\n  chat admin users --prefix al --admin 127.0.0.1:7600\n  chat admin reset-password alice --admin 127.0.0.1:7600   (asks for the new password)\n  chat admin delete-group rust --admin 127.0.0.1:7600"
    )]
    Admin {
        /// The admin endpoint (host:port) of any node.
        #[arg(long, default_value = "127.0.0.1:7600", global = true)]
        admin: String,
        /// The admin token (`admin.token` of the node).
        #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// List accounts (name, when created, disabled), in name order.
    Users {
        /// Only names that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Set a user's password (--password, else read from stdin or asked for); every
    /// token of the user is revoked and every session closed.
    ResetPassword {
        /// The user.
        user: String,
    },
    /// Disable an account: its sessions close, logins are refused.
    Disable {
        /// The user.
        user: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// The user.
        user: String,
    },
    /// Log a user out everywhere: every token revoked, every session closed.
    Logout {
        /// The user.
        user: String,
    },
    /// Delete a user and all its data (its sessions close, its contacts and groups
    /// lose it; what it sent others stays, under its name, which stays taken).
    DeleteUser {
        /// The user.
        user: String,
    },
    /// List groups (name, creator, when created, members), in name order.
    Groups {
        /// Only names that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Delete a group for everyone (members keep the posts already in their inboxes).
    DeleteGroup {
        /// The group.
        group: String,
    },
}

/// The local time zone's offset, read once before any thread starts (reading it is
/// only sound while the process has one thread).
static LOCAL_OFFSET: std::sync::OnceLock<time::UtcOffset> = std::sync::OnceLock::new();

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let _ = LOCAL_OFFSET.set(time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC));
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `chat admin reset-password` takes the new password from --password only: never
    // from CHAT_PASSWORD, which is the caller's own.
    if matches!(cli.command, Some(Command::Admin { .. }))
        && password_source(&matches) != Some(clap::parser::ValueSource::CommandLine)
    {
        cli.password = None;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("chat: {e:#}");
        std::process::exit(1);
    }
}

/// A message's time in the local zone: `14:03` today, `2026-11-29 14:03` before.
fn stamp(ms: u64) -> String {
    let offset = LOCAL_OFFSET.get().copied().unwrap_or(time::UtcOffset::UTC);
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let today = time::OffsetDateTime::now_utc().to_offset(offset).date();
    if at.date() == today {
        format!("{:02}:{:02}", at.hour(), at.minute())
    } else {
        format!(
            "{}-{:02}-{:02} {:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        )
    }
}

/// A delivery as the CLI prints it: its time, then [`format_delivery`].
fn show(d: &chat_client::proto::Delivery) -> String {
    if d.timestamp_ms == 0 {
        format_delivery(d)
    } else {
        format!("{} {}", stamp(d.timestamp_ms), format_delivery(d))
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(Command::Completions { shell }) = &cli.command {
        use clap::CommandFactory;
        clap_complete::generate(*shell, &mut Cli::command(), "chat", &mut std::io::stdout());
        return Ok(());
    }
    let admin_call = match &cli.command {
        Some(Command::RemoveNode { name, admin }) => Some((admin, format!("/nodes/{name}/remove"))),
        Some(Command::Leave { admin }) => Some((admin, "/leave".to_owned())),
        _ => None,
    };
    if let Some(Command::Admin { admin, token, action }) = &cli.command {
        return admin_command(admin, token.clone(), action, cli.password.clone()).await;
    }
    if let Some((admin, path)) = admin_call {
        let (status, body) = http_post(admin, &path).await?;
        if status != 200 {
            bail!("{admin} answered {status}: {}", body.trim());
        }
        print!("{body}");
        return Ok(());
    }
    let tls = match &cli.ca {
        Some(path) => Some(TlsClient::from_ca_file(path, cli.tls_name.clone())?),
        None => None,
    };
    let (client, pushes) = Client::connect_any_with(&cli.servers, tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to {}", cli.servers.join(", ")))?;
    let Some(command) = cli.command else {
        let (user, password) = credentials(&cli.user, &cli.password)?;
        let ok = client.login_device(&user, &password, &cli.device).await?;
        let mut again = Reconnect {
            addrs: cli.servers.clone(),
            tls,
            user,
            password,
            device: cli.device.clone(),
        };
        again.learn(&ok);
        return interactive(client, pushes, again, ok.delivered_seq).await;
    };
    if let Command::Register { name } = &command {
        let password = match &cli.password {
            Some(p) => p.clone(),
            None => rpassword::prompt_password("password: ")?,
        };
        client.register(name, &password).await?;
        println!("registered {name}");
        return Ok(());
    }
    let (user, password) = credentials(&cli.user, &cli.password)?;
    let login = client.login_device(&user, &password, &cli.device).await?;
    match command {
        Command::Register { .. }
        | Command::Completions { .. }
        | Command::RemoveNode { .. }
        | Command::Leave { .. }
        | Command::Admin { .. } => {
            unreachable!("handled above")
        }
        Command::Send { to, text, reply_to } => {
            let id = chat_client::new_client_msg_id();
            let reply_to = reply_to.unwrap_or_default();
            let ack = client.send_private_reply(&to, &id, &text, &reply_to).await?;
            println!("sent {} (seq {})", ack.message_id, ack.seq);
        }
        Command::Reply { message_id, text } => {
            let to = reply_target(&client, &user, &message_id).await?;
            let id = chat_client::new_client_msg_id();
            let ack = match to.strip_prefix('#') {
                Some(group) => client.send_group_reply(group, &id, &text, &message_id).await?,
                None => client.send_private_reply(&to, &id, &text, &message_id).await?,
            };
            println!("sent {} to {to} (reply to {message_id})", ack.message_id);
        }
        Command::SendFile { to, path, text, mime } => {
            let file = client.upload_file(&path, mime.as_deref()).await?;
            let blob = file.blob_id.clone();
            let ack = match to.strip_prefix('#') {
                Some(group) => client.send_group_files(group, &text, vec![file]).await?,
                None => client.send_private_files(&to, &text, vec![file]).await?,
            };
            println!("sent {} (seq {}) file {blob}", ack.message_id, ack.seq);
        }
        Command::Download { blob_id, out } => {
            let size = client.download_file(&blob_id, &out).await?;
            println!(
                "downloaded {blob_id} ({}) to {}",
                chat_client::format_size(size),
                out.display()
            );
        }
        Command::Edit { message_id, text } => {
            let ack = client.edit(&message_id, &text).await?;
            println!("edited {message_id} ({})", ack.message_id);
        }
        Command::Recall { message_id } => {
            let ack = client.recall(&message_id).await?;
            println!("recalled {message_id} ({})", ack.message_id);
        }
        Command::React { message_id, emoji } => {
            let ack = client.react(&message_id, &emoji).await?;
            if emoji.is_empty() {
                println!("removed your reaction to {message_id} ({})", ack.message_id);
            } else {
                println!("reacted {emoji} to {message_id} ({})", ack.message_id);
            }
        }
        Command::GroupCreate {
            group,
            private,
            title,
        } => {
            client.create_group_with(&group, private, &title).await?;
            println!("created #{group}{}", if private { " (private)" } else { "" });
        }
        Command::GroupInvite { group, name } => {
            client.group_invite(&group, &name).await?;
            println!("invited {name} to #{group}");
        }
        Command::GroupAccept { group } => {
            client.join_group(&group).await?;
            println!("joined #{group}");
        }
        Command::GroupKick { group, name } => {
            client.group_remove(&group, &name).await?;
            println!("removed {name} from #{group}");
        }
        Command::GroupBan { group, name } => {
            client.group_ban(&group, &name).await?;
            println!("banned {name} from #{group}");
        }
        Command::GroupUnban { group, name } => {
            client.group_unban(&group, &name).await?;
            println!("unbanned {name} from #{group}");
        }
        Command::GroupTransfer { group, name } => {
            client.group_transfer(&group, &name).await?;
            println!("#{group} now belongs to {name}");
        }
        Command::GroupRole { group, name, role } => {
            let r = if role == "admin" {
                v1::GroupRole::Admin
            } else {
                v1::GroupRole::Member
            };
            client.group_set_role(&group, &name, r).await?;
            println!("{name} is now {role} of #{group}");
        }
        Command::GroupSet {
            group,
            title,
            topic,
            history,
        } => {
            let info = v1::GroupSetInfo {
                group: group.clone(),
                title,
                topic,
                history_for_new_members: history,
            };
            client.group_set_info(info).await?;
            println!("updated #{group}");
        }
        Command::GroupDelete { group } => {
            client.group_delete(&group).await?;
            println!("deleted #{group}");
        }
        Command::GroupInfo { group } => print!("{}", show_group_info(&client.group_info(&group).await?)),
        Command::GroupJoin { group } => {
            client.join_group(&group).await?;
            println!("joined #{group}");
        }
        Command::GroupLeave { group } => {
            client.leave_group(&group).await?;
            println!("left #{group}");
        }
        Command::GroupSend {
            group,
            text,
            reply_to,
        } => {
            let id = chat_client::new_client_msg_id();
            let reply_to = reply_to.unwrap_or_default();
            let ack = client.send_group_reply(&group, &id, &text, &reply_to).await?;
            println!("sent {} (group seq {})", ack.message_id, ack.seq);
        }
        Command::Recv { wait } => {
            recv(&client, pushes, login.delivered_seq, Duration::from_secs(wait)).await?
        }
        Command::Online => {
            for u in client.online().await? {
                println!("{u}");
            }
        }
        Command::Groups => {
            for g in client.my_groups().await? {
                println!("{g}");
            }
        }
        Command::Members { group } => {
            for m in client.members(&group).await? {
                println!("{m}");
            }
        }
        Command::ContactAdd { name: user } => print_contact(&user, client.contact_request(&user).await?),
        Command::ContactAccept { name: user } => print_contact(&user, client.contact_accept(&user).await?),
        Command::ContactDecline { name: user } => print_contact(&user, client.contact_decline(&user).await?),
        Command::ContactRemove { name: user } => print_contact(&user, client.contact_remove(&user).await?),
        Command::Contacts => {
            for c in client.contacts().await? {
                let presence = match (c.state(), c.online, c.last_seen_ms) {
                    (v1::ContactState::Contact, true, _) => " online".to_owned(),
                    (v1::ContactState::Contact, false, 0) => " offline".to_owned(),
                    (v1::ContactState::Contact, false, at) => format!(" offline, last seen {}", stamp(at)),
                    _ => String::new(),
                };
                println!("{} {}{presence}", c.user, state_word(c.state()));
            }
        }
        Command::Block { name: user } => {
            client.block(&user, true).await?;
            println!("blocked {user}");
        }
        Command::Unblock { name: user } => {
            client.block(&user, false).await?;
            println!("unblocked {user}");
        }
        Command::Blocks => {
            for u in client.blocks().await? {
                println!("{u}");
            }
        }
        Command::Privacy {
            messages,
            hide_last_seen,
        } => {
            let only = messages.map(|m| m == "contacts");
            let p = client.set_privacy(only, hide_last_seen).await?;
            let who = if p.contacts_only { "contacts" } else { "everyone" };
            println!("messages from: {who}");
            println!("last seen: {}", if p.hide_last_seen { "hidden" } else { "shown" });
        }
        Command::Passwd { new_password } => {
            let new = match new_password {
                Some(p) => p,
                None => rpassword::prompt_password("new password: ")?,
            };
            client.change_password(&password, &new).await?;
            println!("password changed; your other sessions were closed");
        }
        Command::Devices => {
            for line in device_lines(&client.devices().await?) {
                println!("{line}");
            }
        }
        Command::LogoutDevice { id } => {
            client.logout_device(&id).await?;
            println!("logged out device {id}");
        }
        Command::Sessions => {
            for s in client.sessions().await? {
                println!("{}", session_line(&s));
            }
        }
        Command::LogoutEverywhere => {
            client.logout_everywhere().await?;
            println!("logged out everywhere");
        }
        Command::Nodes => {
            for n in &login.nodes {
                let state = if n.up { "up" } else { "down" };
                println!("{} {} {state} {}", n.name, n.client_addr, n.sessions);
            }
        }
        Command::History { with } => {
            for line in history(&client, &with).await? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `chat devices`' lines: `ID  NAME  created TIME  last login TIME  expires TIME`.
fn device_lines(list: &v1::DeviceList) -> Vec<String> {
    let mut lines: Vec<String> = list
        .devices
        .iter()
        .map(|d| {
            let name = if d.device.is_empty() {
                "(unnamed)"
            } else {
                &d.device
            };
            let current = if d.current { "  (this device)" } else { "" };
            format!(
                "{}  {name}  created {}  last login {}  expires {}{current}",
                d.id,
                full_stamp(d.created_at_ms),
                full_stamp(d.last_login_ms),
                full_stamp(d.expires_at_ms)
            )
        })
        .collect();
    if list.truncated {
        lines.push("(more devices not listed)".into());
    }
    lines
}

/// A `chat sessions` line: `NODE  ADDRESS  since TIME  device ID`.
fn session_line(s: &v1::SessionInfo) -> String {
    let current = if s.current { "  (this session)" } else { "" };
    format!(
        "{}  {}  since {}  device {}{current}",
        s.node,
        s.client_address,
        full_stamp(s.connected_since_ms),
        s.device_id
    )
}

/// Where --password came from, looking into the subcommands it may be given after.
fn password_source(matches: &clap::ArgMatches) -> Option<clap::parser::ValueSource> {
    let mut at = matches;
    let mut source = at.value_source("password");
    while let Some((_, sub)) = at.subcommand() {
        source = sub.value_source("password").or(source);
        at = sub;
    }
    source
}

/// `chat admin ...`: one request to the admin endpoint (a listing follows its pages).
async fn admin_command(
    addr: &str,
    token: Option<String>,
    action: &AdminAction,
    password: Option<String>,
) -> Result<()> {
    use chat_client::admin::AdminClient;
    let admin = AdminClient::new(addr, token);
    let said = match action {
        AdminAction::Users { prefix } => {
            for u in admin.users(prefix).await? {
                let disabled = if u.disabled { "  disabled" } else { "" };
                println!("{}  created {}{disabled}", u.name, full_stamp(u.created_at_ms));
            }
            return Ok(());
        }
        AdminAction::Groups { prefix } => {
            for g in admin.groups(prefix).await? {
                let more = if g.members_at_least { "+" } else { "" };
                println!(
                    "{}  by {}  created {}  {}{more} members",
                    g.name,
                    g.creator,
                    full_stamp(g.created_at_ms),
                    g.members
                );
            }
            return Ok(());
        }
        AdminAction::ResetPassword { user } => {
            let password = match password {
                Some(p) => p,
                None => new_password(user)?,
            };
            admin.reset_password(user, &password).await?
        }
        AdminAction::Disable { user } => admin.user_action(user, "disable").await?,
        AdminAction::Enable { user } => admin.user_action(user, "enable").await?,
        AdminAction::Logout { user } => admin.user_action(user, "logout").await?,
        AdminAction::DeleteUser { user } => admin.user_action(user, "delete").await?,
        AdminAction::DeleteGroup { group } => admin.delete_group(group).await?,
    };
    print!("{said}");
    Ok(())
}

/// The new password for a reset: asked for twice on a terminal, else the first line of
/// stdin.
fn new_password(user: &str) -> Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("no password on stdin");
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password(format!("new password for {user}: "))?;
    let again = rpassword::prompt_password("again: ")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}

/// A time as `2026-11-29 14:03` in the local zone (`-` for none).
fn full_stamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let offset = LOCAL_OFFSET.get().copied().unwrap_or(time::UtcOffset::UTC);
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

fn credentials(user: &Option<String>, password: &Option<String>) -> Result<(String, String)> {
    let user = user
        .clone()
        .ok_or_else(|| anyhow!("--user is required for this command"))?;
    let password = match password {
        Some(p) => p.clone(),
        None => rpassword::prompt_password(format!("password for {user}: "))?,
    };
    Ok((user, password))
}

/// Prints what arrived after `delivered`, acknowledges it (as read when `read`: an
/// interactive session shows it to its user), and returns the last seq printed. Live
/// pushes that arrive meanwhile are newer than the sync's end; callers print pushes
/// above the returned seq only, which keeps the order and drops nothing.
async fn print_backlog(client: &Client, delivered: u64, read: bool) -> Result<u64> {
    let mut last = delivered;
    for d in client.sync_all(delivered).await? {
        println!("{}", show(&d));
        last = d.seq;
    }
    if last > delivered {
        // Best effort: what was printed stays printed (a lost connection shows next).
        let _ = if read {
            client.ack_read(last).await
        } else {
            client.ack_delivered(last).await
        };
    }
    Ok(last)
}

/// Prints offline messages from the inbox, then live ones, acknowledging what it printed.
async fn recv(
    client: &Client,
    mut pushes: UnboundedReceiver<Push>,
    delivered: u64,
    wait: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = print_backlog(client, delivered, false).await?;
    loop {
        let push = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            p = pushes.recv() => p,
        };
        match push {
            Some(Push::Delivery(d)) if d.seq > last => {
                if d.seq > last + 1 {
                    // A gap: fetch what is missing first.
                    for missed in client.sync_all(last).await? {
                        if missed.seq < d.seq {
                            println!("{}", show(&missed));
                        }
                    }
                }
                println!("{}", show(&d));
                last = d.seq;
                client.ack_delivered(last).await?;
            }
            Some(Push::Receipt(r)) => {
                println!("receipt: {} {:?} by {}", r.message_id, r.kind(), r.by);
                // Stored receipts take inbox seqs: acknowledge them like messages.
                if r.seq > last {
                    last = r.seq;
                    client.ack_delivered(last).await?;
                }
            }
            Some(Push::Closing(c)) => bail!("server closed the connection: {}", c.reason),
            Some(Push::Presence(p)) => p.changes.iter().for_each(|c| println!("{}", show_presence(c))),
            Some(Push::Typing(t)) => println!("{}", show_typing(&t)),
            Some(_) => {}
            None => bail!("connection lost"),
        }
    }
    Ok(())
}

async fn history(client: &Client, with: &str) -> Result<Vec<String>> {
    let (kind, name) = match with.strip_prefix('#') {
        Some(g) => (ConversationKind::Group, g),
        None => (ConversationKind::Private, with),
    };
    let page = client.history(kind, name, 0, 50).await?;
    let mut lines: Vec<String> = page.messages.iter().map(show).collect();
    lines.reverse();
    Ok(lines)
}

const HELP: &str = "  @USER TEXT     private message
  #GROUP TEXT    group message
  TEXT           to the current conversation (the last one used)
  :to @U | #G    set the current conversation
  :olu           online users
  :create G      create group G
  :join G        join group G
  :leave G       leave group G
  :groups        my groups
  :members G     members of group G
  :invite G U    invite U to group G
  :kick G U      remove U from group G
  :ban G U       ban U from group G
  :unban G U     unban U from group G
  :transfer G U  hand group G over to U
  :role G U R    make U of group G an admin or a member (R)
  :info G        group G's settings and members with roles
  :add U         ask U to be your contact (or accept U's request)
  :accept U      accept U's contact request
  :decline U     decline U's contact request
  :remove U      remove contact U (or withdraw a request)
  :contacts      my contacts and requests
  :block U       block U
  :unblock U     unblock U
  :blocks        users I block
  :history X     history with user X or #group X (with message ids)
  :reply ID TEXT answer message ID in its conversation
  :edit ID TEXT  edit your message ID
  :delete ID     delete message ID for everyone (also :recall)
  :react ID E    react to message ID with emoji E; without E, remove yours
  :file @U PATH  send a file to user U (or :file #G PATH to group G)
  :download B PATH  save file B (its blob id) to PATH
  :devices       my devices (ID, name, times)
  :logout-device ID  log device ID out (its sessions close)
  :sessions      my sessions on every node
  :help          this text
  :q             quit";

/// What an interactive session needs to connect and log in again.
struct Reconnect {
    /// `--server` addresses, then the nodes logins listed.
    addrs: Vec<String>,
    tls: Option<TlsClient>,
    user: String,
    password: String,
    device: String,
}

impl Reconnect {
    /// Remembers the nodes a login listed, to reconnect to them too.
    fn learn(&mut self, ok: &chat_client::proto::LoginOk) {
        for node in &ok.nodes {
            if !node.client_addr.is_empty() && !self.addrs.contains(&node.client_addr) {
                self.addrs.push(node.client_addr.clone());
            }
        }
    }

    /// Connects to any node and logs in, with backoff, for up to [`RECONNECT_FOR`];
    /// then prints what arrived after `last` (and acknowledges it).
    async fn connect(&mut self, last: &mut u64) -> Result<(Client, UnboundedReceiver<Push>)> {
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        let mut wait = Duration::from_millis(200);
        loop {
            if let Ok((client, pushes)) = Client::connect_any_with(&self.addrs, self.tls.as_ref()).await {
                match client
                    .login_device(&self.user, &self.password, &self.device)
                    .await
                {
                    Ok(ok) => {
                        self.learn(&ok);
                        println!("-- reconnected; catching up");
                        match print_backlog(&client, *last, true).await {
                            Ok(printed) => {
                                *last = printed;
                                return Ok((client, pushes));
                            }
                            Err(e) if is_connection_error(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) if is_refusal(&e) => bail!("reconnected, but the login failed: {e}"),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "no server answered for {}s: {}",
                    RECONNECT_FOR.as_secs(),
                    self.addrs.join(", ")
                );
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// How long an interactive session tries to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// Whether `e` is the connection failing (then reconnecting may help), not the server
/// refusing the request.
fn is_connection_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<chat_client::ClientError>()
        .is_some_and(is_connection)
}

/// Whether a login was refused for good (not the cluster being briefly unable to
/// serve it, as while a failed node's partitions move).
fn is_refusal(e: &chat_client::ClientError) -> bool {
    use chat_client::proto::ErrorCode as C;
    matches!(
        e.code(),
        Some(C::InvalidCredentials | C::NotFound | C::InvalidName | C::BadRequest | C::UnsupportedVersion)
    )
}

fn is_connection(e: &chat_client::ClientError) -> bool {
    use chat_client::ClientError as E;
    matches!(e, E::Closed | E::Io(_) | E::Timeout(_))
}

/// A message the connection was lost under before its acknowledgement: resent with the
/// same client message id after reconnecting (the server stores it once).
struct Unsent {
    to: String,
    client_msg_id: String,
    text: String,
    /// The message it answers (empty: none).
    reply_to: String,
}

impl Unsent {
    async fn send(&self, client: &Client) -> chat_client::Result<v1::SendAck> {
        let (id, text, reply_to) = (&self.client_msg_id, &self.text, &self.reply_to);
        match self.to.strip_prefix('#') {
            Some(group) => client.send_group_reply(group, id, text, reply_to).await,
            None => client.send_private_reply(&self.to, id, text, reply_to).await,
        }
    }
}

async fn interactive(
    mut client: Client,
    mut pushes: UnboundedReceiver<Push>,
    mut again: Reconnect,
    delivered: u64,
) -> Result<()> {
    println!("logged in as {}; :help for commands", again.user);
    let mut last = delivered;
    // Lost while printing the backlog: the loop reconnects at once.
    let mut lost_at_start = false;
    match print_backlog(&client, delivered, true).await {
        Ok(printed) => last = printed,
        Err(e) if is_connection_error(&e) => lost_at_start = true,
        Err(e) => return Err(e),
    }
    let mut state = State {
        me: again.user.clone(),
        ..State::default()
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let mut lost = std::mem::take(&mut lost_at_start);
        if !lost {
            tokio::select! {
            push = pushes.recv() => match push {
                Some(Push::Delivery(d)) => {
                    if d.seq > last {
                        println!("{}", show(&d));
                        last = d.seq;
                        // Shown to the user: read (which implies delivered).
                        let _ = client.ack_read(last).await;
                    }
                }
                Some(Push::Receipt(r)) => {
                    let what = match state.sent.get(&r.message_id) {
                        Some(excerpt) => format!("\"{excerpt}\""),
                        None => r.message_id.clone(),
                    };
                    let kind = match r.kind() {
                        chat_client::proto::ReceiptKind::Read => "read",
                        _ => "delivered",
                    };
                    println!("  ({kind} by {}: {what})", r.by);
                    if r.seq > last {
                        last = r.seq;
                        let _ = client.ack_delivered(last).await;
                    }
                }
                Some(Push::Closing(c)) => {
                    // Logged out (this device, everywhere, a new password, an operator):
                    // logging in again with the password would undo it.
                    if c.code() == v1::ErrorCode::NotAuthenticated {
                        bail!("logged out by the server: {}", c.reason);
                    }
                    println!("-- the server is closing the connection: {}", c.reason);
                    lost = true;
                }
                Some(Push::Error(e)) => eprintln!("server error: {}", e.message),
                Some(Push::Presence(p)) => p.changes.iter().for_each(|c| println!("  ({})", show_presence(c))),
                Some(Push::Typing(t)) => println!("  ({})", show_typing(&t)),
                None => lost = true,
            },
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                match command(&client, line.trim(), &mut state).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) if is_connection_error(&e) => {
                        if state.unsent.is_some() {
                            println!("-- not acknowledged yet: it is sent again after reconnecting");
                        } else {
                            eprintln!("error: {e:#}");
                        }
                        lost = true;
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            }
        }
        if lost {
            println!("-- connection to the server lost; reconnecting");
            (client, pushes) = again.connect(&mut last).await?;
            if let Some(u) = state.unsent.take() {
                match u.send(&client).await {
                    Ok(ack) => {
                        println!("  (sent {})", ack.message_id);
                        state.sent.insert(ack.message_id, excerpt(&u.text));
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
        }
    }
}

/// Where a reply to `message_id` goes, `bob` or `#group`; an error that says so when
/// `me` has no such message.
async fn reply_target(client: &Client, me: &str, message_id: &str) -> Result<String> {
    if chat_client::parse_message_id(message_id).is_none() {
        bail!("{message_id:?} is not a message id (they look like m:bob:alice:0f3a…, p:bob:3 or g:rust:12)");
    }
    match client.conversation_of(me, message_id).await {
        Ok(Some(to)) => Ok(to),
        Ok(None) => bail!("message {message_id} not found among your messages"),
        // Refused (no such group, not a member): not found either, and why.
        Err(e) if e.code().is_some() => bail!("message {message_id} not found: {e}"),
        Err(e) => Err(e.into()),
    }
}

/// At most this many characters of a message name it in a receipt.
const EXCERPT_CHARS: usize = 30;

fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

/// What an interactive session keeps between lines.
#[derive(Default)]
struct State {
    /// What this session sent, by message id: receipts name the message, not its id.
    sent: std::collections::HashMap<String, String>,
    /// A message the connection was lost under, to send again.
    unsent: Option<Unsent>,
    /// Where a plain line goes: `bob` or `#group` (set by `:to`, or the last one used).
    current: Option<String>,
    /// Who is logged in (a reply looks its message up among theirs).
    me: String,
}

/// Runs one interactive line; true means quit.
async fn command(client: &Client, line: &str, state: &mut State) -> Result<bool> {
    // A plain line goes to the current conversation.
    let addressed;
    let line = if line.is_empty() || line.starts_with([':', '@', '#']) {
        line
    } else {
        let Some(to) = &state.current else {
            bail!("no conversation yet: start one with @USER TEXT, #GROUP TEXT or :to @USER");
        };
        addressed = match to.strip_prefix('#') {
            Some(_) => format!("{to} {line}"),
            None => format!("@{to} {line}"),
        };
        addressed.as_str()
    };
    let (head, rest) = line.split_once(' ').map_or((line, ""), |(h, r)| (h, r.trim()));
    let arg = |what: &str| -> Result<&str> {
        if rest.is_empty() {
            bail!("usage: {head} {what}")
        } else {
            Ok(rest)
        }
    };
    match head {
        "" => {}
        ":q" | ":quit" => return Ok(true),
        ":help" => println!("{HELP}"),
        ":olu" => println!("online: {}", client.online().await?.join(", ")),
        ":create" => client
            .create_group(arg("GROUP")?)
            .await
            .map(|()| println!("created #{rest}"))?,
        ":join" => client
            .join_group(arg("GROUP")?)
            .await
            .map(|()| println!("joined #{rest}"))?,
        ":leave" => client
            .leave_group(arg("GROUP")?)
            .await
            .map(|()| println!("left #{rest}"))?,
        ":groups" => println!("groups: {}", client.my_groups().await?.join(", ")),
        ":members" => println!("members: {}", client.members(arg("GROUP")?).await?.join(", ")),
        ":invite" | ":kick" | ":ban" | ":unban" | ":transfer" | ":role" => {
            let words: Vec<&str> = arg("GROUP USER")?.split_whitespace().collect();
            match (head, words.as_slice()) {
                (":invite", [g, u]) => client
                    .group_invite(g, u)
                    .await
                    .map(|()| println!("invited {u} to #{g}"))?,
                (":kick", [g, u]) => client
                    .group_remove(g, u)
                    .await
                    .map(|()| println!("removed {u} from #{g}"))?,
                (":ban", [g, u]) => client
                    .group_ban(g, u)
                    .await
                    .map(|()| println!("banned {u} from #{g}"))?,
                (":unban", [g, u]) => client
                    .group_unban(g, u)
                    .await
                    .map(|()| println!("unbanned {u} from #{g}"))?,
                (":transfer", [g, u]) => client
                    .group_transfer(g, u)
                    .await
                    .map(|()| println!("#{g} now belongs to {u}"))?,
                (":role", [g, u, r @ ("admin" | "member")]) => {
                    let role = if *r == "admin" {
                        v1::GroupRole::Admin
                    } else {
                        v1::GroupRole::Member
                    };
                    client
                        .group_set_role(g, u, role)
                        .await
                        .map(|()| println!("{u} is now {r} of #{g}"))?
                }
                (":role", _) => bail!("usage: :role GROUP USER admin|member"),
                _ => bail!("usage: {head} GROUP USER"),
            }
        }
        ":info" => print!("{}", show_group_info(&client.group_info(arg("GROUP")?).await?)),
        ":add" => print_contact(rest, client.contact_request(arg("USER")?).await?),
        ":accept" => print_contact(rest, client.contact_accept(arg("USER")?).await?),
        ":decline" => print_contact(rest, client.contact_decline(arg("USER")?).await?),
        ":remove" => print_contact(rest, client.contact_remove(arg("USER")?).await?),
        ":contacts" => {
            let contacts = client.contacts().await?;
            let shown: Vec<String> = contacts
                .iter()
                .map(|c| format!("{} ({})", c.user, state_word(c.state())))
                .collect();
            println!("contacts: {}", shown.join(", "));
        }
        ":block" => client
            .block(arg("USER")?, true)
            .await
            .map(|()| println!("blocked {rest}"))?,
        ":unblock" => client
            .block(arg("USER")?, false)
            .await
            .map(|()| println!("unblocked {rest}"))?,
        ":blocks" => println!("blocked: {}", client.blocks().await?.join(", ")),
        ":devices" => device_lines(&client.devices().await?)
            .iter()
            .for_each(|l| println!("{l}")),
        ":logout-device" => client
            .logout_device(arg("ID")?)
            .await
            .map(|()| println!("logged out device {rest}"))?,
        ":sessions" => {
            for s in client.sessions().await? {
                println!("{}", session_line(&s));
            }
        }
        ":to" => {
            let to = arg("@USER|#GROUP")?;
            let name = to.strip_prefix('@').unwrap_or(to);
            if name.is_empty() || name == "#" {
                bail!("usage: :to @USER or :to #GROUP");
            }
            state.current = Some(name.to_owned());
            println!("-- plain lines now go to {to}");
        }
        ":history" => {
            for l in history(client, arg("USER|#GROUP")?).await? {
                println!("{l}");
            }
        }
        ":reply" | ":edit" => {
            let (id, text) = id_and_text(arg("ID TEXT")?).ok_or_else(|| anyhow!("usage: {head} ID TEXT"))?;
            if head == ":reply" {
                let to = reply_target(client, &state.me, id).await?;
                send_line(client, state, to, text, id).await?;
            } else {
                client.edit(id, text).await?;
                println!("  (edited {id})");
            }
        }
        ":file" => {
            let usage = "usage: :file @USER PATH or :file #GROUP PATH";
            let (to, path) = arg("@USER|#GROUP PATH")?
                .split_once(' ')
                .ok_or_else(|| anyhow!(usage))?;
            let to = to.strip_prefix('@').unwrap_or(to);
            if to.is_empty() || to == "#" {
                bail!(usage);
            }
            let file = client
                .upload_file(std::path::Path::new(path.trim()), None)
                .await?;
            let blob = file.blob_id.clone();
            let ack = match to.strip_prefix('#') {
                Some(group) => client.send_group_files(group, "", vec![file]).await?,
                None => client.send_private_files(to, "", vec![file]).await?,
            };
            println!("  (sent {} file {blob})", ack.message_id);
        }
        ":download" => {
            let usage = "usage: :download BLOB_ID PATH";
            let (blob, path) = arg("BLOB_ID PATH")?
                .split_once(' ')
                .ok_or_else(|| anyhow!(usage))?;
            let size = client
                .download_file(blob, std::path::Path::new(path.trim()))
                .await?;
            println!(
                "  (downloaded {} to {})",
                chat_client::format_size(size),
                path.trim()
            );
        }
        ":delete" | ":recall" => {
            let id = arg("ID")?;
            client.recall(id).await?;
            println!("  (deleted {id} for everyone)");
        }
        ":react" => {
            // No emoji: the reaction is removed.
            let (id, emoji) = arg("ID [EMOJI]")?
                .split_once(' ')
                .map_or((rest, ""), |(id, e)| (id, e.trim()));
            client.react(id, emoji).await?;
            if emoji.is_empty() {
                println!("  (removed your reaction to {id})");
            } else {
                println!("  (reacted {emoji} to {id})");
            }
        }
        h if (h.starts_with('@') || h.starts_with('#')) && h.len() > 1 => {
            let text = arg("TEXT")?;
            let to = if h.starts_with('#') {
                h.to_owned()
            } else {
                h[1..].to_owned()
            };
            send_line(client, state, to, text, "").await?;
        }
        _ => bail!("unknown command {head:?}; :help lists them"),
    }
    Ok(false)
}

/// `ID TEXT` split in two; `None` without a text.
fn id_and_text(rest: &str) -> Option<(&str, &str)> {
    let (id, text) = rest.split_once(' ')?;
    let text = text.trim();
    (!text.is_empty()).then_some((id, text))
}

/// Sends an interactive line's message to `to` (`bob` or `#group`), answering
/// `reply_to` (empty: none); it becomes the current conversation. Lost under a lost
/// connection, it is kept to be sent again.
async fn send_line(client: &Client, state: &mut State, to: String, text: &str, reply_to: &str) -> Result<()> {
    let client_msg_id = chat_client::new_client_msg_id();
    let unsent = Unsent {
        to,
        client_msg_id,
        text: text.to_owned(),
        reply_to: reply_to.to_owned(),
    };
    let ack = unsent.send(client).await;
    state.current = Some(unsent.to.clone());
    let ack = match ack {
        Ok(ack) => ack,
        Err(e) => {
            let e = anyhow::Error::from(e);
            if is_connection_error(&e) {
                state.unsent = Some(unsent);
            }
            return Err(e);
        }
    };
    println!("  (sent {})", ack.message_id);
    state.sent.insert(ack.message_id, excerpt(text));
    Ok(())
}

/// A bodiless HTTP/1.1 POST to `addr` (host:port); returns the status and the body.
async fn http_post(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the admin endpoint {addr}"))?;
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}"))?;
    Ok((status, body.to_owned()))
}

/// A relation in one word, as `contacts` prints it.
fn state_word(state: v1::ContactState) -> &'static str {
    match state {
        v1::ContactState::Contact => "contact",
        v1::ContactState::Incoming => "incoming",
        v1::ContactState::Outgoing => "outgoing",
        v1::ContactState::None => "none",
    }
}

fn print_contact(user: &str, state: v1::ContactState) {
    println!("{user}: {}", state_word(state));
}

/// A presence change in words: `presence: bob online`, `presence: bob offline, last
/// seen 14:03`.
fn show_presence(p: &v1::Presence) -> String {
    match (p.online, p.last_seen_ms) {
        (true, _) => format!("presence: {} online", p.user),
        (false, 0) => format!("presence: {} offline", p.user),
        (false, at) => format!("presence: {} offline, last seen {}", p.user, stamp(at)),
    }
}

/// A typing notice in words: `typing: bob in #rust`, `typing: bob stopped`.
fn show_typing(t: &v1::TypingNotice) -> String {
    let place = if t.kind == ConversationKind::Group as i32 {
        format!(" in #{}", t.conversation)
    } else {
        String::new()
    };
    let what = if t.stopped { " stopped" } else { "" };
    format!("typing: {}{place}{what}", t.from)
}

/// A group's settings, then its members with their roles, one per line.
fn show_group_info(info: &v1::GroupInfo) -> String {
    let mut out = format!(
        "#{}{}: owner {}{}{}\n",
        info.group,
        if info.private { " (private)" } else { "" },
        info.owner,
        if info.title.is_empty() {
            String::new()
        } else {
            format!(", title {:?}", info.title)
        },
        if info.topic.is_empty() {
            String::new()
        } else {
            format!(", topic {:?}", info.topic)
        },
    );
    for m in &info.members {
        let role = match m.role() {
            v1::GroupRole::Owner => "owner",
            v1::GroupRole::Admin => "admin",
            v1::GroupRole::Member => "member",
        };
        out.push_str(&format!("{} {role}\n", m.user));
    }
    out
}
