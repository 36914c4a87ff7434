//! The TOML configuration file.

use super::*;

impl Layer {
    pub(super) fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let origin = format!("config file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                ConfigError::new(format!("{origin}: cannot read: not valid UTF-8 text ({e})"))
            } else {
                ConfigError::new(format!("{origin}: cannot read: {e}"))
            }
        })?;
        Layer::from_toml(&text, &origin)
    }

    /// `origin` starts every error message, e.g. `config file /etc/x.toml`.
    pub(super) fn from_toml(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let ctx = FileCtx { origin, text };
        // Two passes over the text: every top-level value with its position, for the
        // single-valued settings and unknown keys; then the lists, whose items keep theirs.
        let top: std::collections::BTreeMap<String, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        let mut in_order: Vec<_> = top.iter().collect();
        in_order.sort_by_key(|(_, v)| v.span().start);
        let mut scalars = Scalars::default();
        for (key, value) in in_order {
            if Scalars::KEYS.contains(&key.as_str()) {
                // one key at a time, so a type error is placed on its line
                let one = toml::Table::from_iter([(key.clone(), value.get_ref().clone())]);
                let s: Scalars = one.try_into().map_err(|e: toml::de::Error| {
                    ctx.at(
                        value.span(),
                        format!("{key}: {}", humanize_types(e.message())),
                    )
                })?;
                scalars = scalars.or(s);
            } else if !LIST_KEYS.contains(&key.as_str()) {
                let known: Vec<&str> = LIST_KEYS.iter().chain(Scalars::KEYS).copied().collect();
                return Err(ctx.at(value.span(), unknown_key(key, &known)));
            }
        }
        let span = |key: &str| top.get(key).map_or(0..0, |v| v.span());
        let wpex = check_scalars(&scalars, str::to_string, |key, m| ctx.at(span(key), m))?;
        let f: FileConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;

        let mut listen = None;
        if let Some(items) = &f.listen {
            let mut addrs = Vec::new();
            for s in items {
                addrs.push(parse_listen("listen", s.get_ref()).map_err(|m| ctx.at(s.span(), m))?);
            }
            listen = Some(addrs);
        }
        if let Some(addr) = wpex {
            listen.get_or_insert_with(Vec::new).push(addr);
        }

        let allow = match &f.allow {
            Some(items) => Some(
                items
                    .iter()
                    .map(|s| parse_key("allow", s.get_ref()).map_err(|m| ctx.at(s.span(), m)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };

        let groups = match &f.groups {
            Some(groups) => {
                let mut out = Vec::new();
                for g in groups {
                    let keys = g
                        .get_ref()
                        .iter()
                        .map(|s| parse_key("groups", s.get_ref()).map_err(|m| ctx.at(s.span(), m)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let shown: Vec<&str> =
                        g.get_ref().iter().map(|s| s.get_ref().as_str()).collect();
                    out.push(
                        check_group("groups entry", &format!("{shown:?}"), keys)
                            .map_err(|m| ctx.at(g.span(), m))?,
                    );
                }
                Some(out)
            }
            None => None,
        };

        let mut servers = Vec::new();
        let mut server_lines: Vec<(PublicKey, usize)> = Vec::new();
        for entry in f.server.iter().flatten() {
            let e = entry.get_ref();
            let missing = |what: &str| ctx.at(entry.span(), format!("server: missing {what}"));
            let address = e
                .address
                .as_ref()
                .ok_or_else(|| missing("address = \"HOST:PORT\""))?;
            let addr = address
                .get_ref()
                .parse::<HostPort>()
                .map_err(|err| ctx.at(address.span(), format!("server address: {err}")))?;
            let public_key = e
                .public_key
                .as_ref()
                .ok_or_else(|| missing("public_key = \"...\" (the server's base64 public key)"))?;
            let key = parse_key("server public_key", public_key.get_ref())
                .map_err(|m| ctx.at(public_key.span(), m))?;
            let line = ctx.line(&public_key.span());
            if let Some((_, first)) = server_lines.iter().find(|(k, _)| *k == key) {
                return Err(ctx.at(
                    public_key.span(),
                    format!(
                        "server public_key {key}: already the key of the server on line {first} (a key chooses one server)"
                    ),
                ));
            }
            server_lines.push((key, line));
            servers.push(Server { addr, key });
        }

        let mut peers = Vec::new();
        for entry in f.peer.iter().flatten() {
            peers.push(peer_from_file(&ctx, entry)?);
        }
        check_peer_keys(&peers).map_err(ConfigError::new)?;

        let awg = match &f.awg {
            Some(table) => awg_from_file(&ctx, table, "")?,
            None => None,
        };

        Ok(Layer {
            listen: listen.and_then(non_empty),
            allow: allow.and_then(non_empty),
            groups: groups.and_then(non_empty),
            servers: non_empty(servers),
            peers: non_empty(peers),
            awg,
            wgproxy_timeout: None,
            scalars,
        })
    }
}

/// The file's list settings as written ([`LIST_KEYS`]; the rest are [`Scalars`]); items keep
/// their position for error messages.
#[derive(Debug, Deserialize)]
pub(super) struct FileConfig {
    listen: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<Vec<Spanned<String>>>>>,
    server: Option<Vec<Spanned<FileServer>>>,
    peer: Option<Vec<Spanned<FilePeer>>>,
    awg: Option<Spanned<AwgTable>>,
}

/// A `[[server]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    address: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
}

/// A `[[peer]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePeer {
    port: Option<Spanned<u16>>,
    listen: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    uapi: Option<Spanned<String>>,
    awg: Option<Spanned<AwgTable>>,
}

/// An `[awg]` table: parameter name → value, checked by [`AwgParams::set`].
pub(super) type AwgTable = std::collections::BTreeMap<String, Spanned<toml::Value>>;

/// Where file errors come from, to prefix them with `origin: line N:`.
pub(super) struct FileCtx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl FileCtx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::new(format!(
            "{}: line {}: {message}",
            self.origin,
            self.line(&span)
        ))
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = humanize_types(&rewrite_unknown_field(e.message()));
        // An unknown key is named by the message; say which table it is in.
        let name = |pos: usize| {
            if message.starts_with("unknown key") {
                self.table_before(pos).map(str::to_string)
            } else {
                self.key_before(pos)
            }
        };
        match e.span() {
            Some(span) => match name(span.start) {
                Some(key) => {
                    if (key == "server" || key == "peer") && message.contains("invalid type") {
                        message.push_str(&format!(" (write one [[{key}]] table per {key})"));
                    }
                    self.at(span, format!("{key}: {message}"))
                }
                None => self.at(span, message),
            },
            None => ConfigError::new(format!("{}: {message}", self.origin)),
        }
    }

    /// The `key` of the `key = value` line that `pos` (inside the value) is
    /// on, so that type errors, which point at the value, can name the
    /// setting, after the table it is in (`peer port`); the table alone for
    /// an error on a key of it or on its header. `None` on continuation lines
    /// of multi-line arrays outside tables.
    fn key_before(&self, pos: usize) -> Option<String> {
        let before = self.text.get(..pos)?;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[pos..]
            .find('\n')
            .map_or(self.text.len(), |i| pos + i);
        if let Some(header) = header_name(&self.text[start..end]) {
            return Some(header.to_string());
        }
        let key = before[start..]
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| is_bare_key(key));
        let table = self.table_before(pos);
        match (table, key) {
            (Some(table), Some(key)) => Some(format!("{table} {key}")),
            (None, Some(key)) => Some(key.to_string()),
            (Some(table), None) => Some(table.to_string()),
            (None, None) => None,
        }
    }

    /// The table that the line of `pos` is in (the last header above it), if any.
    fn table_before(&self, pos: usize) -> Option<&str> {
        let before = self.text.get(..pos)?;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        before[..start].lines().rev().find_map(header_name)
    }
}

/// The name in a table header line (`[awg]`, `[[peer]]`, `[peer.awg]`).
pub(super) fn header_name(line: &str) -> Option<&str> {
    let line = line.trim();
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let (name, rest) = inner.split_once(']')?;
    let rest = rest.strip_prefix(']').unwrap_or(rest).trim();
    let name = name.trim();
    (is_bare_key(name) && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

pub(super) fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Replaces Rust type names in serde messages with what a user would write.
pub(super) fn humanize_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, human) in [
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected struct FileServer", "expected a table"),
        ("expected struct FilePeer", "expected a table"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(human);
        }
    }
    out
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into
/// `unknown key "x" (did you mean "y"?; expected one of: a, b)`, the keys being those of the
/// table the key is in.
pub(super) fn rewrite_unknown_field(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let name = &rest[..end];
    // serde names the expected fields in backquotes, in declaration order.
    let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    unknown_key(name, &expected)
}

/// `unknown key "x" (did you mean "y"?; expected one of: a, b)`, `expected` being the keys of
/// the table the key is in.
pub(super) fn unknown_key(name: &str, expected: &[&str]) -> String {
    let suggestion = expected
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| format!("did you mean \"{k}\"? "))
        .unwrap_or_default();
    let hint =
        if expected.contains(&"awg") && AWG_KEYS.contains(&name.to_ascii_lowercase().as_str()) {
            "; AmneziaWG parameters go in an awg table"
        } else {
            ""
        };
    format!(
        "unknown key {name:?} ({suggestion}expected one of: {}{hint})",
        expected.join(", ")
    )
}

/// Levenshtein distance, for "did you mean" hints.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A `[[peer]]` table.
pub(super) fn peer_from_file(
    ctx: &FileCtx<'_>,
    entry: &Spanned<FilePeer>,
) -> Result<PeerSpec, ConfigError> {
    let e = entry.get_ref();
    let (listen, place_span, at) = match (&e.port, &e.listen) {
        (Some(port), None) => {
            let p = check_port("peer port", *port.get_ref()).map_err(|m| ctx.at(port.span(), m))?;
            (PeerListen::Port(p), port.span(), format!("peer port {p}"))
        }
        (None, Some(listen)) => {
            let addr =
                parse_listen("peer listen", listen.get_ref()).map_err(|m| ctx.at(listen.span(), m))?;
            (
                PeerListen::Addr(addr),
                listen.span(),
                format!("peer listen {:?}", listen.get_ref()),
            )
        }
        (Some(port), Some(_)) => {
            return Err(ctx.at(
                port.span(),
                "peer: give port = N or listen = \"ADDR:PORT\", not both".to_string(),
            ))
        }
        (None, None) => {
            return Err(ctx.at(
                entry.span(),
                "peer: missing port = N (on the host of the first listen address) or listen = \"ADDR:PORT\"".to_string(),
            ))
        }
    };
    let public_key = e.public_key.as_ref().ok_or_else(|| {
        ctx.at(
            entry.span(),
            "peer: missing public_key = \"...\" (the responder's base64 public key)".to_string(),
        )
    })?;
    let key = parse_key("peer public_key", public_key.get_ref())
        .map_err(|m| ctx.at(public_key.span(), m))?;
    let endpoint = match &e.endpoint {
        Some(ep) => Some(
            parse_endpoint("peer endpoint", ep.get_ref(), "").map_err(|m| ctx.at(ep.span(), m))?,
        ),
        None => None,
    };
    let uapi = match &e.uapi {
        Some(u) => Some(check_uapi("peer uapi", u.get_ref()).map_err(|m| ctx.at(u.span(), m))?),
        None => None,
    };
    if let (Some(_), Some(u)) = (&e.endpoint, &e.uapi) {
        return Err(ctx.at(
            u.span(),
            "peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"
                .to_string(),
        ));
    }
    let awg = match &e.awg {
        Some(table) => awg_from_file(ctx, table, "peer ")?,
        None => None,
    };
    let line = ctx.line(&place_span);
    Ok(PeerSpec {
        at: format!("{}: line {line}: {at}", ctx.origin),
        name: format!("the peer on line {line}"),
        listen,
        key,
        endpoint,
        uapi,
        awg,
    })
}

/// An `[awg]` table or a peer's `awg`; `prefix` starts the setting's name in errors (`""` or
/// `"peer "`). `None` when the table is empty.
pub(super) fn awg_from_file(
    ctx: &FileCtx<'_>,
    table: &Spanned<AwgTable>,
    prefix: &str,
) -> Result<Option<AwgParams>, ConfigError> {
    if table.get_ref().is_empty() {
        return Ok(None);
    }
    // In file order, so the first mistake is the one reported.
    let mut entries: Vec<(&String, &Spanned<toml::Value>)> = table.get_ref().iter().collect();
    entries.sort_by_key(|(_, v)| v.span().start);
    let mut params = AwgParams::plain();
    for (key, value) in entries {
        let text = match value.get_ref() {
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::String(s) => s.clone(),
            other => {
                return Err(ctx.at(
                    value.span(),
                    format!(
                        "{prefix}awg: {key} must be an integer, or for h1..h4 also a \"N-M\" string (got {})",
                        other.type_str()
                    ),
                ))
            }
        };
        params
            .set(key, &text)
            .map_err(|e| ctx.at(value.span(), format!("{prefix}{e}")))?;
    }
    check_awg(&params).map_err(|e| ctx.at(table.span(), format!("{prefix}{e}")))?;
    Ok(Some(params))
}
