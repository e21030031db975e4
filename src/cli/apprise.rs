//! `kci apprise import` and `kci apprise export`: Apprise URLs to kci's
//! destinations and channel config, and back, for the operator's own
//! services. Import prints a TOML snippet on stdout and each bad line on
//! stderr; export prints Apprise URLs, credentials included (the operator
//! asked for them).

use super::ConfigArg;
use crate::channels::apprise::urls::{self, Imported, Setting, encode};
use crate::model::DestinationUri;
use anyhow::Context;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

/// Reads Apprise URLs from `source` (`-`: stdin). Fails (after printing
/// everything else) when a line could not be read.
pub fn import(source: &Path) -> anyhow::Result<ExitCode> {
    let text = if source == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?
    };
    let results = urls::import(&text);
    let (out, errors) = render_import(&results);
    print!("{out}");
    for e in &errors {
        eprintln!("kci: {}: {e}", source.display());
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints Apprise URLs for the config's enabled channels, with `to` (kci
/// destination URIs) as their targets.
pub fn export(config: ConfigArg, to: Vec<String>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&config)?;
    let to = to
        .iter()
        .map(|s| {
            s.parse::<DestinationUri>()
                .map_err(|e| anyhow::anyhow!("--to {s}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    print!("{}", apprise_urls(&config, &to));
    Ok(ExitCode::SUCCESS)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The import as text: a TOML snippet per native service with its
/// destinations in comments, then one `[channels.apprise]` section for
/// the rest; errors separately, each naming its line.
pub fn render_import(results: &[(usize, Result<Imported, String>)]) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut bridged: Vec<(usize, String, &[String], &str)> = Vec::new();
    let mut errors = Vec::new();
    let mut given: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (line, r) in results {
        match r {
            Err(e) => errors.push(format!("line {line}: {e}")),
            Ok(Imported::Native {
                service,
                tags,
                destinations,
                section,
                settings,
                notes,
            }) => {
                let _ = writeln!(out, "# line {line}: {service}, natively");
                if !tags.is_empty() {
                    let _ = writeln!(
                        out,
                        "# (Apprise tags {}: give these destinations to the contacts they were for)",
                        tags.join(", ")
                    );
                }
                for d in destinations {
                    let _ = writeln!(out, "# destination: {d}");
                }
                for n in notes {
                    let _ = writeln!(out, "# note: {n}");
                }
                // A section given twice would not load: the second time,
                // its settings are shown commented out, to compare.
                let again = given.get(section).copied();
                let lead = if again.is_some() { "# " } else { "" };
                match again {
                    Some(first) => {
                        let _ = writeln!(
                            out,
                            "# [{section}] is given above (line {first}); kci has one per channel. This line's:"
                        );
                    }
                    None => {
                        given.insert(section, *line);
                    }
                }
                let _ = writeln!(out, "{lead}[{section}]");
                for (k, v) in settings {
                    match v {
                        Setting::Value(v) => {
                            let _ = writeln!(out, "{lead}{k} = {}", toml_str(v));
                        }
                        Setting::Missing(why) => {
                            let _ = writeln!(out, "# {k} = \"…\"  # required: {why}");
                        }
                    }
                }
                out.push('\n');
            }
            Ok(Imported::Bridge { tags, entry, why }) => {
                bridged.push((*line, entry.expose().clone(), tags, why));
            }
        }
    }
    if !bridged.is_empty() {
        let _ = writeln!(
            out,
            "# Through the Apprise bridge (to an apprise-api server):"
        );
        for (line, _, tags, why) in &bridged {
            let dests = if tags.is_empty() {
                "apprise:all".to_string()
            } else {
                tags.iter()
                    .map(|t| format!("apprise:{t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "# line {line}: {why}; destination: {dests}");
        }
        let _ = writeln!(out, "[channels.apprise]");
        let _ = writeln!(
            out,
            "url = \"http://127.0.0.1:8000\"  # your apprise-api server"
        );
        let _ = writeln!(out, "urls = [");
        for (_, url, tags, _) in &bridged {
            let line = if tags.is_empty() {
                url.clone()
            } else {
                format!("{}={url}", tags.join(","))
            };
            let _ = writeln!(out, "  {},", toml_str(&line));
        }
        let _ = writeln!(out, "]");
    }
    (out, errors)
}

/// Apprise URLs for a kci config's enabled channels. `to` fills in the
/// targets (kci destination URIs); a channel with none gets a `{target}`
/// placeholder to replace. Returns text: comments and one URL a line.
pub fn apprise_urls(config: &crate::config::Config, to: &[DestinationUri]) -> String {
    use crate::model::ChannelKind;
    let mut out = String::new();
    let targets = |kind: ChannelKind| -> Vec<String> {
        to.iter()
            .filter(|d| d.channel() == kind)
            .map(|d| {
                let s = d.to_string();
                s.split_once(':').map(|(_, r)| r.to_string()).unwrap_or(s)
            })
            .collect()
    };
    let mut emit = |what: &str, note: Option<&str>, urls: Vec<String>| {
        let _ = writeln!(out, "# {what}");
        if let Some(n) = note {
            let _ = writeln!(out, "# note: {n}");
        }
        for u in urls {
            let _ = writeln!(out, "{u}");
        }
        out.push('\n');
    };
    let or_placeholder =
        |v: Vec<String>, p: &str| if v.is_empty() { vec![p.to_string()] } else { v };

    if let Some(smtp) = &config.email.smtp {
        if let Ok(s) = url::Url::parse(smtp.expose()) {
            let from = config
                .email
                .from
                .parse::<lettre::message::Mailbox>()
                .map(|m| m.email.to_string())
                .unwrap_or_default();
            let tls = s
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            let (scheme, mode) = match (s.scheme(), tls.as_deref()) {
                ("smtps", _) => ("mailtos", "&mode=ssl"),
                (_, Some("required")) => ("mailtos", ""),
                _ => ("mailto", ""),
            };
            let host = s.host_str().unwrap_or_default();
            let port = s.port().map(|p| format!(":{p}")).unwrap_or_default();
            let login = match (s.username(), s.password()) {
                ("", _) => String::new(),
                (u, Some(p)) => format!("{u}:{p}@"),
                (u, None) => format!("{u}@"),
            };
            let urls = or_placeholder(targets(ChannelKind::Email), "{to_email}")
                .into_iter()
                .map(|t| {
                    format!(
                        "{scheme}://{login}{host}{port}/{t}?smtp={host}&from={}{mode}",
                        encode(&from)
                    )
                })
                .collect();
            emit("email ([email] smtp)", None, urls);
        }
    } else {
        emit(
            "email: mail goes to a Maildir outbox, nothing to export",
            None,
            vec![],
        );
    }
    let ch = &config.channels;
    if let Some(c) = &ch.ntfy {
        let scheme = if c.url.scheme() == "https" {
            "ntfys"
        } else {
            "ntfy"
        };
        let auth = c
            .token
            .as_ref()
            .map(|t| format!("{}@", encode(t.expose())))
            .unwrap_or_default();
        let host = c.url.host_str().unwrap_or_default();
        let port = c.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let urls = or_placeholder(targets(ChannelKind::Ntfy), "{topic}")
            .into_iter()
            .map(|t| format!("{scheme}://{auth}{host}{port}/{t}"))
            .collect();
        emit("ntfy ([channels.ntfy])", None, urls);
    }
    if let Some(c) = &ch.telegram {
        let urls = or_placeholder(targets(ChannelKind::Telegram), "{chat_id}")
            .into_iter()
            .map(|t| format!("tgram://{}/{t}/", c.bot_token.expose()))
            .collect();
        emit("Telegram ([channels.telegram])", None, urls);
    }
    if let Some(c) = &ch.pushover {
        let urls = or_placeholder(targets(ChannelKind::Pushover), "{user_key}")
            .into_iter()
            .map(|t| format!("pover://{t}@{}", c.token.expose()))
            .collect();
        emit("Pushover ([channels.pushover])", None, urls);
    }
    if let Some(c) = &ch.signal {
        let scheme = if c.url.scheme() == "https" {
            "signals"
        } else {
            "signal"
        };
        let host = c.url.host_str().unwrap_or_default();
        let port = c.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let urls = or_placeholder(targets(ChannelKind::Signal), "{to_phone}")
            .into_iter()
            .map(|t| {
                format!(
                    "{scheme}://{host}{port}/{}/{}",
                    encode(&c.number),
                    encode(&t)
                )
            })
            .collect();
        let note = c.token.as_ref().map(|_| "Apprise's Signal plugin has no bearer token: the server must let Apprise in without one (or by user:password@)");
        emit("Signal ([channels.signal])", note, urls);
    }
    if let Some(c) = &ch.matrix {
        let scheme = if c.homeserver.scheme() == "https" {
            "matrixs"
        } else {
            "matrix"
        };
        let host = c.homeserver.host_str().unwrap_or_default();
        let port = c
            .homeserver
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let urls = or_placeholder(targets(ChannelKind::Matrix), "r/{room}")
            .into_iter()
            .map(|t| {
                let room = match t.split_once('/') {
                    Some(("roomid", id)) => format!("!{id}"),
                    Some((_, alias)) => format!("#{alias}"),
                    None => t.clone(),
                };
                format!(
                    "{scheme}://{{user}}:{{password}}@{host}{port}/{}",
                    encode(&room)
                )
            })
            .collect();
        emit(
            "Matrix ([channels.matrix])",
            Some(
                "Apprise logs in with a user and password; kci's access token does not carry over: fill in {user} and {password}",
            ),
            urls,
        );
    }
    if ch.x.is_some() {
        emit(
            "X ([channels.x])",
            Some(
                "Apprise signs in with OAuth 1.0a keys and names users by handle; kci's OAuth 2.0 refresh token and user ids do not carry over: fill in the four keys and {user}",
            ),
            vec![
                "x://{consumer_key}/{consumer_secret}/{access_key}/{access_secret}/@{user}?mode=dm"
                    .into(),
            ],
        );
    }
    if let Some(c) = &ch.whatsapp {
        let urls = or_placeholder(targets(ChannelKind::WhatsApp), "{to_phone}")
            .into_iter()
            .map(|t| {
                format!(
                    "whatsapp://{}@{}/{}",
                    encode(c.access_token.expose()),
                    c.phone_number_id,
                    encode(t.trim_start_matches('+'))
                )
            })
            .collect();
        let note = (!c.templates.is_empty()).then_some(
            "Apprise sends every notice as free text (or as one template for all): kci's templates per type do not carry over",
        );
        emit("WhatsApp ([channels.whatsapp])", note, urls);
    }
    let hooks: Vec<String> = to
        .iter()
        .filter_map(|d| match d {
            DestinationUri::Webhook(u) => {
                let scheme = if u.scheme() == "https" {
                    "jsons"
                } else {
                    "json"
                };
                let rest = &u.as_str()[u.scheme().len() + 3..];
                Some(format!("{scheme}://{rest}"))
            }
            _ => None,
        })
        .collect();
    if !hooks.is_empty() {
        emit(
            "webhooks",
            Some("Apprise posts its own JSON {version, title, message, type}, unsigned"),
            hooks,
        );
    }
    if let Some(c) = &ch.apprise {
        match &c.key {
            Some(key) => {
                let scheme = if c.url.scheme() == "https" {
                    "apprises"
                } else {
                    "apprise"
                };
                let host = c.url.host_str().unwrap_or_default();
                let port = c.url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let path = c.url.path().trim_end_matches('/');
                emit(
                    "apprise-api ([channels.apprise] key)",
                    None,
                    vec![format!("{scheme}://{host}{port}{path}/{}", key.expose())],
                );
            }
            None => emit(
                "[channels.apprise] urls, as an Apprise TEXT config",
                None,
                c.urls.iter().map(|u| u.expose().clone()).collect(),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::apprise::urls::import;
    use crate::channels::apprise::urls::testkit::{native, one};

    #[test]
    fn bad_lines_are_named_and_do_not_stop_the_others() {
        let text = "# my services\n\
                    ; also a comment\n\
                    \n\
                    ntfy://alerts\n\
                    this is not a url\n\
                    tgram://not-a-token/123/\n\
                    ops.eu=discord://a/b\n\
                    include https://config.example.com/get/KEY\n\
                    friends = user1, user2\n\
                    pover://435jdj3k78@abcdefghijklmnop\n";
        let results = import(text);
        let lines: Vec<(usize, bool)> = results.iter().map(|(l, r)| (*l, r.is_ok())).collect();
        assert_eq!(
            lines,
            [
                (4, true),
                (5, false),
                (6, false),
                (7, false),
                (8, false),
                (9, false),
                (10, true)
            ]
        );
        let (out, errors) = render_import(&results);
        assert!(
            out.contains("[channels.ntfy]") && out.contains("[channels.pushover]"),
            "{out}"
        );
        assert_eq!(errors.len(), 5);
        assert!(
            errors[0].starts_with("line 5: not an Apprise URL"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("line 6: a Telegram URL starts with the bot token"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("`.` cannot be in an Apprise tag"),
            "{errors:?}"
        );
        assert!(errors[3].contains("`include`"), "{errors:?}");
        assert!(errors[4].contains("tag group"), "{errors:?}");
        // An error never quotes the line it is about.
        assert!(
            !errors.iter().any(|e| e.contains("not-a-token")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_channel_given_twice_stays_loadable() {
        let (out, _) = render_import(&import("tgram://111:aaa/1/\ntgram://222:bbb/2/\n"));
        let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(
            table["channels"]["telegram"]["bot_token"].as_str(),
            Some("111:aaa")
        );
        assert!(out.contains("# bot_token = \"222:bbb\""), "{out}");
        assert!(out.contains("# destination: telegram:2"), "{out}");
    }

    #[test]
    fn the_rendered_import_is_valid_toml() {
        let (out, errors) = render_import(&import(
            "tgram://123456789:abcdefg_hijklmnop/12315544/\nops=discord://a/b\nmatrixs://kci:pw@m.example.org/#ops\n",
        ));
        assert!(errors.is_empty());
        let table: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(
            table["channels"]["telegram"]["bot_token"].as_str(),
            Some("123456789:abcdefg_hijklmnop")
        );
        assert_eq!(
            table["channels"]["apprise"]["urls"][0].as_str(),
            Some("ops=discord://a/b")
        );
        // The missing Matrix token is left out, so the config cannot load until it is given.
        assert!(table["channels"]["matrix"].get("access_token").is_none());
        assert!(
            out.contains("# destination: apprise:ops") || out.contains("destination: apprise:ops"),
            "{out}"
        );
    }

    #[test]
    fn export_then_import_gives_back_the_same_channels() {
        let config = crate::config::Config::parse(
            "[email]\nfrom = \"kci <kci@isp.example>\"\nsmtp = \"smtp://kci:p%40ss@mail.isp.example:587?tls=required\"\n\
             [channels.ntfy]\nurl = \"https://ntfy.isp.example\"\ntoken = \"tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2\"\n\
             [channels.telegram]\nbot_token = \"123456789:abcdefg_hijklmnop\"\n\
             [channels.pushover]\ntoken = \"azGDORePK8gMaC0QOYAMyEEuzJnyUi\"\n\
             [channels.signal]\nurl = \"http://127.0.0.1:8080\"\nnumber = \"+447700900999\"\n\
             [channels.whatsapp]\nphone_number_id = \"106540352242922\"\naccess_token = \"EAAJB3Zz9ZC0sBO\"\n",
            "t",
        )
        .unwrap();
        let to: Vec<DestinationUri> = [
            "mailto:noc@isp.example",
            "ntfy:ops",
            "telegram:12315544",
            "pushover:uQiRzpo4DXghDmr9QzzfQu27cmVRsG",
            "signal:+447700900123",
            "whatsapp:+447700900124",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let exported = apprise_urls(&config, &to);
        let urls: Vec<&str> = exported
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(urls.len(), 6, "{exported}");
        let back: Vec<_> = urls.iter().map(|u| native(&one(u))).collect();
        let dests: Vec<String> = back.iter().flat_map(|(d, _, _)| d.clone()).collect();
        assert_eq!(dests, to.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        let get = |section: &str, key: &str| {
            back.iter()
                .find(|(_, s, _)| *s == section)
                .and_then(|(_, _, set)| set.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
        };
        assert_eq!(
            get("email", "smtp").as_deref(),
            Some("smtp://kci:p%40ss@mail.isp.example:587?tls=required")
        );
        assert_eq!(get("email", "from").as_deref(), Some("kci@isp.example"));
        assert_eq!(
            get("channels.ntfy", "url").as_deref(),
            Some("https://ntfy.isp.example")
        );
        assert_eq!(
            get("channels.ntfy", "token").as_deref(),
            Some("tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2")
        );
        assert_eq!(
            get("channels.telegram", "bot_token").as_deref(),
            Some("123456789:abcdefg_hijklmnop")
        );
        assert_eq!(
            get("channels.pushover", "token").as_deref(),
            Some("azGDORePK8gMaC0QOYAMyEEuzJnyUi")
        );
        assert_eq!(
            get("channels.signal", "url").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            get("channels.signal", "number").as_deref(),
            Some("+447700900999")
        );
        assert_eq!(
            get("channels.whatsapp", "phone_number_id").as_deref(),
            Some("106540352242922")
        );
        assert_eq!(
            get("channels.whatsapp", "access_token").as_deref(),
            Some("EAAJB3Zz9ZC0sBO")
        );
    }

    #[test]
    fn export_without_targets_leaves_placeholders() {
        let config = crate::config::Config::parse(
            "[channels.telegram]\nbot_token = \"123456789:abc\"\n[channels.apprise]\nurl = \"http://127.0.0.1:8000/api\"\nkey = \"ops\"\n\
             [channels.x]\nclient_id = \"abc\"\nrefresh_token = \"r\"\n",
            "t",
        )
        .unwrap();
        let out = apprise_urls(&config, &[]);
        assert!(out.contains("tgram://123456789:abc/{chat_id}/"), "{out}");
        assert!(out.contains("apprise://127.0.0.1:8000/api/ops"), "{out}");
        assert!(out.contains("Maildir"), "{out}");
        assert!(
            out.contains("x://{consumer_key}/") && out.contains("OAuth 1.0a"),
            "{out}"
        );
    }
}
