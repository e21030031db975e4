//! Apprise URLs to kci and back, for the operator's own channels.
//!
//! Import reads Apprise URLs (one a line, or an Apprise TEXT config:
//! `#`/`;` comments, `tag1,tag2=url`) and says, for each, which kci
//! destinations and which `[channels.X]` settings reach the same service
//! natively, or, where kci has no such channel (or the URL asks for
//! something kci's channel does not do), that it goes through the bridge:
//! a line for `[channels.apprise] urls`. Export goes the other way, from a
//! kci config's enabled channels to Apprise URLs.
//!
//! URL formats, from Apprise's service pages (caronc/apprise-docs,
//! `locales/en/services/*/index.md`; formerly the caronc/apprise wiki):
//! * ntfy: `ntfy[s]://{topic}`, `ntfy[s]://[{token}@|{user}:{password}@]{host}[:{port}]/{topics}`
//!   (`ntfy://{topic}` alone means ntfy.sh; `?token=`, `?auth=token`);
//! * Telegram: `tgram://{bot_token}/{chat_id}[:{topic}]/…`;
//! * Pushover: `pover://{user_key}@{token}[/{device}…][/#{group_key}]`;
//! * email: `mailto[s]://[{user}:{password}@]{domain}[:{port}][/{to}…]`
//!   with `?smtp=`, `?from=`, `?name=`, `?to=`, `?user=`, `?pass=`,
//!   `?mode=ssl|starttls`; `mailtos` is STARTTLS on 587 by default;
//! * JSON: `json[s]://[{user}:{password}@]{host}[:{port}][/{path}]`,
//!   `?method=`, `+header`, `:field`, `-param`;
//! * Matrix: `matrix[s]://{user}:{password}@{host}[:{port}]/#{alias}/!{room_id}`
//!   (a room without `:server` is on `{host}`), `?mode=` for webhooks;
//! * Signal API: `signal[s]://[{user}:{password}@]{host}[:{port}]/{from}[/{to}…]`
//!   (no target: the sender itself; `group.…` targets are groups);
//! * apprise-api itself: `apprise[s]://{host}[:{port}]/{key}`;
//! * X (Twitter): `x|twitter|tweet://{ckey}/{csecret}/{akey}/{asecret}[/{targets}…]`,
//!   `?mode=dm` (the default) or `tweet`, `?to=`; targets are usernames
//!   (`@` optional), none meaning the account itself (apprise
//!   `plugins/twitter.py`). Its keys are OAuth 1.0a, which kci's X channel
//!   (OAuth 2.0 user context) cannot use: they are not carried over;
//! * WhatsApp: `whatsapp://[{template}:]{token}@{from_phone_id}/{targets}…`,
//!   `?lang=` (the template's, default `en_US`), `?token=`, `?template=`,
//!   `?from=`/`?source=`, `?to=`, `:N=body` mapping the body to a
//!   template parameter (apprise `plugins/NotifyWhatsApp.py`);
//! * TEXT config: `[tags=]url`, tags split by `,` or spaces (apprise-docs
//!   `getting-started/configuration`). YAML configs are not read.

use crate::model::{DestinationUri, Secret};

/// One `[tags=]url` line of an Apprise TEXT config.
#[derive(Clone, PartialEq)]
pub struct Entry {
    pub tags: Vec<String>,
    pub url: Secret<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("tags", &self.tags)
            .field("url", &self.url)
            .finish()
    }
}

impl Entry {
    /// Reads `[tags=]scheme://…`. Errors say what is wrong without quoting
    /// the line, which may hold a credential.
    pub fn parse(line: &str) -> Result<Entry, String> {
        let line = line.trim();
        if line.split_whitespace().next() == Some("include") {
            return Err("`include` lines are not followed; import the included file itself".into());
        }
        let Some(sep) = line.find("://") else {
            return Err(if line.contains('=') {
                "a tag group (`group = tag, tag`) is not read; tag each URL instead".into()
            } else {
                "not an Apprise URL (it needs `scheme://`)".into()
            });
        };
        let (tags, url) = match line[..sep].rfind('=') {
            Some(eq) => (&line[..eq], line[eq + 1..].trim()),
            None => ("", line),
        };
        let tags = tags
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| {
                crate::model::parse_apprise_tag(t)
                    .map_err(|e| format!("tag `{}`: {e}", t.escape_default()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scheme = &url[..url.find("://").unwrap_or(0)];
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(
                "not an Apprise URL (its scheme is letters and digits before `://`)".into(),
            );
        }
        if url.len() <= scheme.len() + 3 {
            return Err(format!("`{scheme}://` with nothing after it"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "a `{scheme}://` URL with a space in it (write spaces as %20)"
            ));
        }
        Ok(Entry {
            tags,
            url: Secret::new(url.to_string()),
        })
    }

    /// Whether a notice to `apprise:<tag>` goes to this URL: `all` takes
    /// every one, else the URL must carry the tag (as Apprise selects).
    pub fn matches(&self, tag: &str) -> bool {
        tag == "all" || self.tags.iter().any(|t| t == tag)
    }

    /// The parts of the URL that may be credentials, to scrub from errors.
    pub fn secret_parts(&self) -> Vec<String> {
        let Ok(u) = AppriseUrl::parse(self.url.expose()) else {
            return Vec::new();
        };
        u.user
            .into_iter()
            .chain(u.password)
            .chain(std::iter::once(u.authority))
            .chain(u.path)
            .chain(u.query.into_iter().map(|(_, v)| v))
            .filter(|s| s.len() >= 6)
            .collect()
    }
}

/// An Apprise URL taken apart. Apprise URLs are not all valid URLs (a
/// Telegram bot token sits where a host would, `#` starts a Matrix room
/// rather than a fragment), so they are split here by hand.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppriseUrl {
    pub scheme: String,
    /// Everything between `://` and the first `/` or `?`, undecoded.
    pub authority: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// Non-empty path segments, decoded.
    pub path: Vec<String>,
    /// Query pairs, decoded, keys lowercased.
    pub query: Vec<(String, String)>,
}

impl AppriseUrl {
    pub fn parse(url: &str) -> Result<AppriseUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "not an Apprise URL (it needs `scheme://`)".to_string())?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (Some(decode(u)), Some(decode(p))),
                None => (Some(decode(ui)), None),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port number"))?;
                (decode(h), Some(port))
            }
            _ => (decode(hostport), None),
        };
        Ok(AppriseUrl {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_string(),
            user: user.filter(|u| !u.is_empty()),
            password: password.filter(|p| !p.is_empty()),
            host,
            port,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(decode)
                .collect(),
            query: query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k).to_ascii_lowercase(), decode(v))
                })
                .collect(),
        })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Query options other than `known`, which kci's channel would not honour.
    fn unknown_params(&self, known: &[&str]) -> Vec<String> {
        // Options of Apprise itself, about its own sending, not the service.
        const GENERAL: &[&str] = &["format", "overflow", "verify", "cto", "rto", "emojis", "tz"];
        self.query
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !known.contains(&k.as_str()) && !GENERAL.contains(&k.as_str()))
            .collect()
    }

    fn secure(&self) -> bool {
        self.scheme.ends_with('s')
    }

    /// `http(s)://host[:port]` of a self-hosted service.
    fn base(&self, secure: bool) -> String {
        let scheme = if secure { "https" } else { "http" };
        match self.port {
            Some(p) => format!("{scheme}://{}:{p}", self.host),
            None => format!("{scheme}://{}", self.host),
        }
    }
}

/// Percent-decoding; invalid escapes are kept as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What one Apprise URL becomes in kci.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// kci reaches the service natively: these destinations, with these
    /// settings in `[section]` (the credential among them).
    Native {
        service: &'static str,
        tags: Vec<String>,
        destinations: Vec<DestinationUri>,
        section: &'static str,
        settings: Vec<(String, Setting)>,
        notes: Vec<String>,
    },
    /// Only through the bridge: a line for `[channels.apprise] urls`.
    Bridge {
        tags: Vec<String>,
        entry: Secret<String>,
        why: String,
    },
}

/// A setting of an imported section.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Value(String),
    /// A required setting the Apprise URL cannot supply: printed
    /// commented out, so the config fails to load until it is filled in.
    Missing(String),
}

fn value(s: impl Into<String>) -> Setting {
    Setting::Value(s.into())
}

/// Reads one entry. `Err` for a URL of a service kci has natively that is
/// garbled (say, a Telegram URL without a bot token).
pub fn import_entry(entry: &Entry) -> Result<Imported, String> {
    let u = AppriseUrl::parse(entry.url.expose())?;
    let native = match u.scheme.as_str() {
        "ntfy" | "ntfys" => ntfy(&u),
        "tgram" => telegram(&u),
        "pover" => pushover(&u),
        "mailto" | "mailtos" => email(&u),
        "json" | "jsons" => webhook(&u),
        "matrix" | "matrixs" => matrix(&u),
        "signal" | "signals" => signal(&u),
        "x" | "twitter" | "tweet" => x(&u),
        "whatsapp" => whatsapp(&u),
        _ => Err(Fallback::Bridge(format!(
            "kci has no `{}://` channel",
            u.scheme
        ))),
    };
    match native {
        Ok(mut n) => {
            if let Imported::Native { tags, .. } = &mut n {
                *tags = entry.tags.clone();
            }
            Ok(n)
        }
        Err(Fallback::Wrong(why)) => Err(why),
        Err(Fallback::Bridge(why)) => Ok(Imported::Bridge {
            tags: entry.tags.clone(),
            entry: entry.url.clone(),
            why,
        }),
    }
}

/// Why a URL is not mapped to a native channel.
enum Fallback {
    /// kci cannot do what it asks natively: it goes through the bridge.
    Bridge(String),
    /// It is wrong: refused, with why.
    Wrong(String),
}

fn bad(msg: impl std::fmt::Display) -> Fallback {
    Fallback::Wrong(msg.to_string())
}

type Mapped = Result<Imported, Fallback>;

fn dest(s: &str) -> Result<DestinationUri, Fallback> {
    s.parse::<DestinationUri>().map_err(bad)
}

fn unknown_note(u: &AppriseUrl, known: &[&str]) -> Option<String> {
    let rest = u.unknown_params(known);
    (!rest.is_empty()).then(|| {
        format!(
            "Apprise options kci's channel does not carry: {}",
            rest.join(", ")
        )
    })
}

fn ntfy(u: &AppriseUrl) -> Mapped {
    if u.password.is_some() {
        return Err(Fallback::Bridge(
            "kci's ntfy channel signs in with an access token, not a user and password".into(),
        ));
    }
    // A user alone is a token when it looks like one (`tk_…`) or `auth=token`
    // says so, as Apprise reads it; else it is a Basic Auth user.
    let user_is_token = u.user.as_deref().is_some_and(|t| t.starts_with("tk_"))
        || u.param("auth")
            .is_some_and(|a| a.eq_ignore_ascii_case("token"));
    if u.user.is_some() && !user_is_token {
        return Err(Fallback::Bridge(
            "kci's ntfy channel signs in with an access token, not a user".into(),
        ));
    }
    let token = u
        .param("token")
        .map(str::to_string)
        .or_else(|| u.user.clone());
    let (url, topics) = if u.path.is_empty() {
        // `ntfy://{topic}`: the public ntfy.sh.
        ("https://ntfy.sh".to_string(), vec![u.host.clone()])
    } else {
        (u.base(u.secure()), u.path.clone())
    };
    if topics.iter().any(|t| t.is_empty()) || u.host.is_empty() {
        return Err(bad("an ntfy URL names no topic"));
    }
    let mut settings = vec![("url".to_string(), value(url))];
    if let Some(t) = token {
        settings.push(("token".into(), value(t)));
    }
    Ok(Imported::Native {
        service: "ntfy",
        tags: vec![],
        destinations: topics
            .iter()
            .map(|t| dest(&format!("ntfy:{t}")))
            .collect::<Result<_, _>>()?,
        section: "channels.ntfy",
        settings,
        notes: unknown_note(u, &["token", "auth", "priority"])
            .into_iter()
            .chain(u.param("priority").map(|_| {
                "`priority=` is not kept: kci sets each message's from the notice's priority"
                    .to_string()
            }))
            .collect(),
    })
}

fn telegram(u: &AppriseUrl) -> Mapped {
    let token = decode(&u.authority);
    let valid_token = token.split_once(':').is_some_and(|(id, rest)| {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty()
    });
    if !valid_token {
        return Err(bad(
            "a Telegram URL starts with the bot token (`tgram://123456789:ABC…/chat_id`)",
        ));
    }
    if u.path.is_empty() {
        return Err(Fallback::Bridge(
            "no chat id: Apprise finds the bot owner's chat itself, kci needs it named".into(),
        ));
    }
    if u.path.iter().any(|c| c.contains(':')) || u.param("topic").is_some() {
        return Err(Fallback::Bridge(
            "kci's Telegram channel posts to chats, not to topics in them".into(),
        ));
    }
    Ok(Imported::Native {
        service: "Telegram",
        tags: vec![],
        destinations: u
            .path
            .iter()
            .map(|c| dest(&format!("telegram:{c}")))
            .collect::<Result<_, _>>()?,
        section: "channels.telegram",
        settings: vec![("bot_token".into(), value(token))],
        notes: unknown_note(u, &[]).into_iter().collect(),
    })
}

fn pushover(u: &AppriseUrl) -> Mapped {
    let (Some(user), token) = (&u.user, &u.host) else {
        return Err(bad("a Pushover URL is `pover://{user_key}@{token}`"));
    };
    if token.is_empty() {
        return Err(bad("a Pushover URL is `pover://{user_key}@{token}`"));
    }
    let mut keys = vec![user.clone()];
    for seg in &u.path {
        match seg.strip_prefix('#') {
            Some(group) => keys.push(group.to_string()),
            None => {
                return Err(Fallback::Bridge(
                    "kci's Pushover channel notifies all of a user's devices, not chosen ones"
                        .into(),
                ));
            }
        }
    }
    Ok(Imported::Native {
        service: "Pushover",
        tags: vec![],
        destinations: keys
            .iter()
            .map(|k| dest(&format!("pushover:{k}")))
            .collect::<Result<_, _>>()?,
        section: "channels.pushover",
        settings: vec![("token".into(), value(token.clone()))],
        notes: unknown_note(u, &["priority", "expire", "interval"])
            .into_iter()
            .chain(["priority", "expire", "interval"].iter().any(|k| u.param(k).is_some()).then(|| {
                "`priority=`, `expire=` and `interval=` are not kept: kci sets the priority from each notice's (urgent: an emergency repeating per [channels.pushover] emergency_retry and emergency_expire)".to_string()
            }))
            .collect(),
    })
}

/// The address in `Name <addr>` or `addr`.
fn address(s: &str) -> &str {
    match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].trim(),
        _ => s.trim(),
    }
}

fn email(u: &AppriseUrl) -> Mapped {
    if u.host.is_empty() {
        return Err(bad("an email URL names no domain or server"));
    }
    let user = u
        .param("user")
        .map(str::to_string)
        .or_else(|| u.user.clone());
    let pass = u
        .param("pass")
        .map(str::to_string)
        .or_else(|| u.password.clone());
    let server = u.param("smtp").unwrap_or(&u.host).to_string();
    let mode = u.param("mode").map(str::to_ascii_lowercase);
    let (scheme, default_port, tls) = match (u.secure(), mode.as_deref()) {
        (_, Some("ssl")) => ("smtps", 465, ""),
        (true, _) => ("smtp", 587, "?tls=required"),
        (false, _) => ("smtp", 25, ""),
    };
    let port = u.port.unwrap_or(default_port);
    let login = match (&user, &pass) {
        (Some(user), Some(pass)) => format!("{}:{}@", encode(user), encode(pass)),
        (Some(user), None) => format!("{}@", encode(user)),
        _ => String::new(),
    };
    let smtp = format!("{scheme}://{login}{server}:{port}{tls}");
    let sender = match (u.param("from"), &user) {
        (Some(f), _) => f.to_string(),
        (None, Some(user)) if user.contains('@') => user.clone(),
        (None, Some(user)) => format!("{user}@{}", u.host),
        (None, None) => return Err(bad("an email URL without a user needs `from=`")),
    };
    let from = match u.param("name") {
        Some(name) if !sender.contains('<') => format!("{name} <{}>", address(&sender)),
        _ => sender.clone(),
    };
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(bad(format!("`{from}` is not a sender address")));
    }
    let mut to: Vec<String> = u.path.iter().map(|t| address(t).to_string()).collect();
    if let Some(t) = u.param("to") {
        to.extend(
            t.split(',')
                .map(|t| address(t).to_string())
                .filter(|t| !t.is_empty()),
        );
    }
    if to.is_empty() {
        to.push(address(&sender).to_string());
    }
    let mut notes: Vec<String> =
        unknown_note(u, &["user", "pass", "smtp", "mode", "from", "name", "to"])
            .into_iter()
            .collect();
    if u.param("smtp").is_none() {
        notes.push(format!(
            "Apprise picks the SMTP server of well-known providers itself; kci uses `{server}` as given: check it"
        ));
    }
    Ok(Imported::Native {
        service: "email",
        tags: vec![],
        destinations: to
            .iter()
            .map(|t| dest(&format!("mailto:{t}")))
            .collect::<Result<_, _>>()?,
        section: "email",
        settings: vec![("from".into(), value(from)), ("smtp".into(), value(smtp))],
        notes,
    })
}

fn webhook(u: &AppriseUrl) -> Mapped {
    if u.user.is_some() || u.password.is_some() {
        return Err(Fallback::Bridge(
            "kci's webhooks carry no credentials in the URL (they are signed instead)".into(),
        ));
    }
    if u.query.iter().any(|(k, _)| k.starts_with(['+', ':', '-'])) {
        return Err(Fallback::Bridge(
            "the URL changes Apprise's headers or payload, which kci's webhooks do not".into(),
        ));
    }
    if u.param("method")
        .is_some_and(|m| !m.eq_ignore_ascii_case("post"))
    {
        return Err(Fallback::Bridge("kci's webhooks always POST".into()));
    }
    if u.host.is_empty() {
        return Err(bad("a JSON URL names no host"));
    }
    let path: String = u.path.iter().map(|s| format!("/{}", encode(s))).collect();
    let target = format!(
        "{}{}",
        u.base(u.secure()),
        if path.is_empty() { "/" } else { &path }
    );
    let d = dest(&target)?;
    let mut notes = vec![
        "kci posts its own JSON, signed per Standard Webhooks ([channels.webhook] secret), not Apprise's {version, title, message, type}: check the receiver reads it".to_string(),
    ];
    if !u.secure() && !d.is_loopback_http() {
        notes.push(
            "plain http:// to another host needs [channels.webhook] allow_http = true".into(),
        );
    }
    if let DestinationUri::Webhook(url) = &d
        && crate::channels::webhook::target::names_private(url)
    {
        notes.push(
            "a webhook to loopback or a private address needs [channels.webhook] allow_private = true"
                .into(),
        );
    }
    notes.extend(unknown_note(u, &["method"]));
    Ok(Imported::Native {
        service: "webhook",
        tags: vec![],
        destinations: vec![d],
        section: "channels.webhook",
        settings: vec![],
        notes,
    })
}

fn matrix(u: &AppriseUrl) -> Mapped {
    if u.param("mode").is_some() {
        return Err(Fallback::Bridge(
            "a Matrix webhook (`mode=`) is not kci's Matrix channel".into(),
        ));
    }
    if u.host.is_empty() || u.user.is_none() {
        return Err(Fallback::Bridge(
            "a Matrix URL without a user is a t2bot webhook or a guest registration".into(),
        ));
    }
    if u.path.is_empty() {
        return Err(Fallback::Bridge(
            "no room: Apprise notifies every joined room, kci needs it named".into(),
        ));
    }
    let server = match u.port {
        Some(p) => format!("{}:{p}", u.host),
        None => u.host.clone(),
    };
    let hsreq = !u
        .param("hsreq")
        .is_some_and(|v| v.starts_with(['n', 'N', '0', 'f', 'F']));
    let on_server = |r: &str| {
        if r.contains(':') || !hsreq {
            r.to_string()
        } else {
            format!("{r}:{server}")
        }
    };
    let destinations = u
        .path
        .iter()
        .map(|room| match room.strip_prefix('!') {
            Some(id) => dest(&format!("matrix:roomid/{}", on_server(id))),
            None => dest(&format!(
                "matrix:r/{}",
                on_server(room.trim_start_matches('#'))
            )),
        })
        .collect::<Result<_, _>>()?;
    let user = u.user.clone().unwrap_or_default();
    Ok(Imported::Native {
        service: "Matrix",
        tags: vec![],
        destinations,
        section: "channels.matrix",
        settings: vec![
            ("homeserver".into(), value(u.base(u.secure()))),
            (
                "access_token".into(),
                Setting::Missing(format!(
                    "kci signs in with an access token, not a password: get one for `{user}` (e.g. by logging in once) and put it here"
                )),
            ),
        ],
        notes: unknown_note(u, &["hsreq", "msgtype", "v", "version"])
            .into_iter()
            .collect(),
    })
}

/// `+` and the digits of an Apprise phone field (which allows spaces,
/// dashes and brackets).
fn phone(s: &str) -> String {
    format!(
        "+{}",
        s.chars().filter(char::is_ascii_digit).collect::<String>()
    )
}

fn signal(u: &AppriseUrl) -> Mapped {
    if u.user.is_some() || u.password.is_some() {
        return Err(Fallback::Bridge(
            "kci's Signal channel authenticates with a bearer token, not a user and password"
                .into(),
        ));
    }
    let Some((from, targets)) = u.path.split_first() else {
        return Err(bad("a Signal URL needs the sender's number after the host"));
    };
    if u.host.is_empty() {
        return Err(bad("a Signal URL names no host"));
    }
    if targets.iter().any(|t| t.starts_with("group.")) {
        return Err(Fallback::Bridge(
            "kci's Signal channel sends to numbers, not groups".into(),
        ));
    }
    let number = phone(from);
    dest(&format!("signal:{number}"))?;
    let targets: Vec<String> = if targets.is_empty() {
        vec![number.clone()]
    } else {
        targets.iter().map(|t| phone(t)).collect()
    };
    Ok(Imported::Native {
        service: "Signal",
        tags: vec![],
        destinations: targets
            .iter()
            .map(|t| dest(&format!("signal:{t}")))
            .collect::<Result<_, _>>()?,
        section: "channels.signal",
        settings: vec![
            ("url".into(), value(u.base(u.secure()))),
            ("number".into(), value(number)),
        ],
        notes: unknown_note(u, &["batch", "status"]).into_iter().collect(),
    })
}

fn x(u: &AppriseUrl) -> Mapped {
    let mode = u.param("mode").map(str::to_ascii_lowercase);
    if u.scheme == "tweet" || mode.as_deref().is_some_and(|m| m.starts_with('t')) {
        return Err(Fallback::Bridge(
            "kci's X channel sends direct messages, not public posts".into(),
        ));
    }
    if mode.as_deref().is_some_and(|m| !m.starts_with('d')) {
        return Err(bad("an X URL's mode is dm or tweet"));
    }
    if u.host.is_empty() || u.path.len() < 3 {
        return Err(bad(
            "an X URL is `x://{consumer_key}/{consumer_secret}/{access_key}/{access_secret}[/@user…]`",
        ));
    }
    let mut users: Vec<String> = u.path[3..].to_vec();
    if let Some(to) = u.param("to") {
        users.extend(
            to.split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    if users.is_empty() {
        return Err(Fallback::Bridge(
            "no target: Apprise messages the account itself, kci needs the user named".into(),
        ));
    }
    let destinations = users
        .iter()
        .map(|t| dest(&format!("x:@{}", t.trim().trim_start_matches('@'))))
        .collect::<Result<_, _>>()?;
    let oauth2 = "Apprise's X URL carries OAuth 1.0a keys (consumer and access key and secret), which are not OAuth 2.0 tokens: authorize kci's X app (OAuth 2.0 with PKCE, scopes dm.write dm.read tweet.read users.read offline.access) as the sending account";
    Ok(Imported::Native {
        service: "X",
        tags: vec![],
        destinations,
        section: "channels.x",
        settings: vec![
            ("client_id".into(), Setting::Missing(format!("{oauth2}, and give its client id"))),
            (
                "refresh_token".into(),
                Setting::Missing("the refresh token that authorization gave".into()),
            ),
        ],
        notes: [
            Some(format!("{oauth2}; the four keys of the URL are not used")),
            Some("each @user is looked up once, when the destination is added through the API, and kept as X's user id".into()),
        ]
        .into_iter()
        .flatten()
        .chain(unknown_note(u, &["mode", "to", "cache", "batch"]))
        .collect(),
    })
}

fn whatsapp(u: &AppriseUrl) -> Mapped {
    let (template, token) = match (&u.user, &u.password) {
        (Some(template), Some(token)) => (Some(template.clone()), Some(token.clone())),
        (Some(token), None) => (None, Some(token.clone())),
        _ => (None, None),
    };
    let Some(token) = u.param("token").map(str::to_string).or(token) else {
        return Err(bad(
            "a WhatsApp URL is `whatsapp://[{template}:]{token}@{from_phone_id}/{targets}`",
        ));
    };
    let phone_id = u
        .param("from")
        .or(u.param("source"))
        .unwrap_or(&u.host)
        .to_string();
    if phone_id.is_empty() || !phone_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "a WhatsApp URL's host is the sending phone number's id (digits)",
        ));
    }
    let mut targets: Vec<String> = u.path.clone();
    if let Some(to) = u.param("to") {
        targets.extend(
            to.split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    if targets.is_empty() {
        return Err(bad("a WhatsApp URL names no number to send to"));
    }
    let template = u.param("template").map(str::to_string).or(template);
    let mut notes: Vec<String> = Vec::new();
    if let Some(t) = &template {
        let lang = u.param("lang").unwrap_or("en_US");
        let body_at: Vec<&str> = u
            .query
            .iter()
            .filter(|(k, v)| k.starts_with(':') && v.eq_ignore_ascii_case("body"))
            .map(|(k, _)| &k[1..])
            .collect();
        let parameters = if body_at.is_empty() {
            String::new()
        } else {
            format!(
                ", parameters = [\"short\"] (Apprise put the body at {{{{{}}}}})",
                body_at.join("}}, {{")
            )
        };
        notes.push(format!(
            "Apprise sends every notice as template `{t}` ({lang}); kci picks a template per type: set [channels.whatsapp.templates.\"TYPE\"] name = \"{t}\", language = \"{lang}\"{parameters} for each type it suits (without one, a type goes as free text, which WhatsApp takes only within 24 hours of the customer's last message)"
        ));
    }
    notes.push("for delivery reports, set app_secret and verify_token and subscribe Meta's webhook to /v1/callbacks/whatsapp".into());
    let rest: Vec<String> = u
        .unknown_params(&["token", "template", "lang", "from", "source", "to"])
        .into_iter()
        .filter(|k| !k.starts_with(':'))
        .collect();
    if !rest.is_empty() {
        notes.push(format!(
            "Apprise options kci's channel does not carry: {}",
            rest.join(", ")
        ));
    }
    Ok(Imported::Native {
        service: "WhatsApp",
        tags: vec![],
        destinations: targets
            .iter()
            .map(|t| dest(&format!("whatsapp:{}", phone(t))))
            .collect::<Result<_, _>>()?,
        section: "channels.whatsapp",
        settings: vec![
            ("phone_number_id".into(), value(phone_id)),
            ("access_token".into(), value(token)),
        ],
        notes,
    })
}

/// Every line of an Apprise URL list or TEXT config: its line number and
/// what it becomes, or what is wrong with it. Blank and comment lines are
/// left out. A YAML config is refused as a whole.
pub fn import(text: &str) -> Vec<(usize, Result<Imported, String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let yaml = lines.iter().position(|l| {
        let l = l.trim_end();
        l == "urls:" || l.starts_with("version:")
    });
    if let Some(i) = yaml {
        return vec![(
            i + 1,
            Err("this is a YAML Apprise config, which is not read: give the URLs one a line, or as a TEXT config (`tag=url`)".into()),
        )];
    }
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            Some((i + 1, Entry::parse(line).and_then(|e| import_entry(&e))))
        })
        .collect()
}

/// Reading an import's results in tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;

    pub fn one(line: &str) -> Imported {
        import_entry(&Entry::parse(line).unwrap()).unwrap()
    }

    pub fn native(i: &Imported) -> (Vec<String>, &'static str, Vec<(String, String)>) {
        match i {
            Imported::Native {
                destinations,
                section,
                settings,
                ..
            } => (
                destinations.iter().map(|d| d.to_string()).collect(),
                section,
                settings
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            match v {
                                Setting::Value(v) => v.clone(),
                                Setting::Missing(_) => "MISSING".into(),
                            },
                        )
                    })
                    .collect(),
            ),
            other => panic!("not native: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn native_services_become_destinations_and_settings() {
        type Case = (
            &'static str,
            Vec<&'static str>,
            &'static str,
            Vec<(String, String)>,
        );
        let cases: Vec<Case> = vec![
            (
                "ntfy://alerts",
                vec!["ntfy:alerts"],
                "channels.ntfy",
                kv(&[("url", "https://ntfy.sh")]),
            ),
            (
                "ntfys://tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2@ntfy.example.org:8443/ops/noc",
                vec!["ntfy:ops", "ntfy:noc"],
                "channels.ntfy",
                kv(&[
                    ("url", "https://ntfy.example.org:8443"),
                    ("token", "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2"),
                ]),
            ),
            (
                "tgram://123456789:abcdefg_hijklmnop/12315544/-100200300/",
                vec!["telegram:12315544", "telegram:-100200300"],
                "channels.telegram",
                kv(&[("bot_token", "123456789:abcdefg_hijklmnop")]),
            ),
            (
                "pover://435jdj3k78435jdj3k78435jdj3k78@abcdefghijklmnop-abcdefg/#gznej3rKEVAvPUxu9vvNnqpmZpokzF",
                vec![
                    "pushover:435jdj3k78435jdj3k78435jdj3k78",
                    "pushover:gznej3rKEVAvPUxu9vvNnqpmZpokzF",
                ],
                "channels.pushover",
                kv(&[("token", "abcdefghijklmnop-abcdefg")]),
            ),
            (
                "mailtos://ops:p%40ss@example.com?smtp=smtp.example.com&from=Ops%20<ops@example.com>&to=noc@example.com",
                vec!["mailto:noc@example.com"],
                "email",
                kv(&[
                    ("from", "Ops <ops@example.com>"),
                    (
                        "smtp",
                        "smtp://ops:p%40ss@smtp.example.com:587?tls=required",
                    ),
                ]),
            ),
            (
                "mailto://localhost?from=kci@example.ca",
                vec!["mailto:kci@example.ca"],
                "email",
                kv(&[("from", "kci@example.ca"), ("smtp", "smtp://localhost:25")]),
            ),
            (
                "jsons://hooks.example.com/kci/in",
                vec!["https://hooks.example.com/kci/in"],
                "channels.webhook",
                vec![],
            ),
            (
                "matrixs://kci:pw@matrix.example.org/#ops/!abc123:other.org",
                vec![
                    "matrix:r/ops:matrix.example.org",
                    "matrix:roomid/abc123:other.org",
                ],
                "channels.matrix",
                kv(&[
                    ("homeserver", "https://matrix.example.org"),
                    ("access_token", "MISSING"),
                ]),
            ),
            (
                "signal://localhost:9922/1-(900)%20555-9999/+447700900123",
                vec!["signal:+447700900123"],
                "channels.signal",
                kv(&[("url", "http://localhost:9922"), ("number", "+19005559999")]),
            ),
        ];
        for (line, dests, section, settings) in cases {
            let (d, s, set) = native(&one(line));
            assert_eq!(d, dests, "{line}");
            assert_eq!(s, section, "{line}");
            assert_eq!(set, settings, "{line}");
        }
    }

    #[test]
    fn a_webhook_into_the_local_network_is_noted_as_needing_allow_private() {
        let notes = |line: &str| match one(line) {
            Imported::Native { notes, .. } => notes.join("\n"),
            other => panic!("{other:?}"),
        };
        for line in ["json://localhost:8080/hook", "jsons://10.1.2.3/hook"] {
            assert!(notes(line).contains("allow_private = true"), "{line}");
        }
        assert!(!notes("jsons://hooks.example.com/kci").contains("allow_private"));
    }

    #[test]
    fn what_kci_cannot_do_natively_goes_through_the_bridge() {
        for (line, why) in [
            (
                "ops=discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
                "no `discord://` channel",
            ),
            ("ntfy://user:pass@ntfy.example.org/alerts", "access token"),
            ("ntfy://someuser@ntfy.example.org/alerts", "not a user"),
            ("tgram://123456789:abcdefg_hijklmnop/", "no chat id"),
            ("tgram://123456789:abcdefg_hijklmnop/12315544:77/", "topics"),
            ("pover://435jdj3k78@abcdefghijklmnop/iphone", "devices"),
            ("json://user:pw@example.com/hook", "credentials"),
            ("json://example.com/hook?+X-Token=abc", "headers"),
            ("matrix://ABCDEFG12345", "t2bot"),
            (
                "signal://localhost:9922/+15555551234/group.abcdefghijklmnop=",
                "groups",
            ),
            ("x://ck/cs/ak/as/@alice?mode=tweet", "not public posts"),
            ("tweet://ck/cs/ak/as", "not public posts"),
            ("x://ck/cs/ak/as", "no target"),
        ] {
            match one(line) {
                Imported::Bridge { why: w, .. } => assert!(w.contains(why), "{line}: {w}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let Imported::Bridge { tags, .. } = one("ops, admin=discord://a/b") else {
            panic!()
        };
        assert_eq!(tags, ["ops", "admin"]);
    }

    #[test]
    fn x_and_whatsapp_urls_map_what_they_carry_and_say_what_they_cannot() {
        let Imported::Native {
            destinations,
            section,
            settings,
            notes,
            ..
        } = one("twitter://ckey123/csecret456/akey789/asecret012/@XDevelopers/alice_2?to=bob")
        else {
            panic!()
        };
        assert_eq!(section, "channels.x");
        assert_eq!(
            destinations
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["x:@XDevelopers", "x:@alice_2", "x:@bob"]
        );
        // OAuth 1.0a keys are not carried over: both settings must be filled in.
        assert!(
            settings
                .iter()
                .all(|(_, v)| matches!(v, Setting::Missing(_)))
        );
        assert_eq!(
            settings.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["client_id", "refresh_token"]
        );
        let all = format!("{settings:?} {notes:?}");
        assert!(
            all.contains("OAuth 1.0a")
                && !all.contains("csecret456")
                && !all.contains("asecret012"),
            "{all}"
        );
        assert!(import_entry(&Entry::parse("x://ck/cs/ak/as/not-a-handle!").unwrap()).is_err());
        assert!(import_entry(&Entry::parse("x://ck/cs").unwrap()).is_err());

        let Imported::Native {
            destinations,
            section,
            settings,
            notes,
            ..
        } = one(
            "whatsapp://appointment_v1:EAAtoken123@106540352242922/+44%207700%20900123/15551234567?lang=en_GB&:1=body",
        )
        else {
            panic!()
        };
        assert_eq!(section, "channels.whatsapp");
        assert_eq!(
            destinations
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["whatsapp:+447700900123", "whatsapp:+15551234567"]
        );
        assert_eq!(
            settings,
            vec![
                ("phone_number_id".to_string(), value("106540352242922")),
                ("access_token".to_string(), value("EAAtoken123")),
            ]
        );
        let notes = notes.join("\n");
        assert!(
            notes.contains(
                "name = \"appointment_v1\", language = \"en_GB\", parameters = [\"short\"]"
            ),
            "{notes}"
        );
        // Free text, the token in the query.
        let Imported::Native { settings, .. } =
            one("whatsapp://106540352242922/447700900123?token=EAAother")
        else {
            panic!()
        };
        assert_eq!(settings[1], ("access_token".to_string(), value("EAAother")));
        for bad in [
            "whatsapp://EAAtoken@106540352242922",
            "whatsapp://EAAtoken@not-digits/447700900123",
            "whatsapp://106540352242922/447700900123",
        ] {
            assert!(import_entry(&Entry::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_configs_are_refused_clearly() {
        let r = import("version: 1\nurls:\n  - ntfy://alerts\n");
        assert_eq!(r.len(), 1);
        assert!(r[0].1.as_ref().unwrap_err().contains("YAML"));
    }

    #[test]
    fn entries_parse_tags_and_refuse_garbage() {
        let e = Entry::parse("  devops admin,ops = json://h/x?a=b  ").unwrap();
        assert_eq!(e.tags, ["devops", "admin", "ops"]);
        assert_eq!(e.url.expose(), "json://h/x?a=b");
        assert!(e.matches("ops") && e.matches("all") && !e.matches("dev"));
        let untagged = Entry::parse("json://h/x?a=b").unwrap();
        assert!(untagged.tags.is_empty() && untagged.matches("all") && !untagged.matches("ops"));
        for bad in ["", "json://", "://x", "js-on://x", "json://a b", "x=y"] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_survives_bad_escapes() {
        assert_eq!(decode("a%40b"), "a@b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(encode("p@ss word"), "p%40ss%20word");
    }
}
