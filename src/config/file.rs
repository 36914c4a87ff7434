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
            toml::from_str(text).map_err(|e| ctx.toml_error(&e, None))?;
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
        let f: FileConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e, Some(&top)))?;

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
            let e = Fields::new(&ctx, "server", entry, SERVER_KEYS)?;
            let missing = |what: &str| ctx.at(entry.span(), format!("server: missing {what}"));
            let (address, span) = e
                .string("address")?
                .ok_or_else(|| missing("address = \"HOST:PORT\""))?;
            let addr = address
                .parse::<HostPort>()
                .map_err(|err| ctx.at(span, format!("server address: {err}")))?;
            let (public_key, span) = e
                .string("public_key")?
                .ok_or_else(|| missing("public_key = \"...\" (the server's base64 public key)"))?;
            let key =
                parse_key("server public_key", public_key).map_err(|m| ctx.at(span.clone(), m))?;
            let line = ctx.line(&span);
            if let Some((_, first)) = server_lines.iter().find(|(k, _)| *k == key) {
                return Err(ctx.at(
                    span,
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
    server: Option<Vec<Spanned<Table>>>,
    peer: Option<Vec<Spanned<Table>>>,
    awg: Option<Spanned<Table>>,
}

/// A table as written (`[[server]]`, `[[peer]]`, `[awg]`): values by key, each with its
/// position; [`Fields`] checks the keys and the types.
pub(super) type Table = std::collections::BTreeMap<String, Spanned<toml::Value>>;

/// The values of one `[[server]]` or `[[peer]]` table, its keys checked.
pub(super) struct Fields<'a> {
    ctx: &'a FileCtx<'a>,
    /// The table's name, which starts its errors (`peer port: ...`).
    name: &'static str,
    table: &'a Table,
}

impl<'a> Fields<'a> {
    /// Refuses a key that is not one of `keys` (the first in file order).
    fn new(
        ctx: &'a FileCtx<'a>,
        name: &'static str,
        table: &'a Spanned<Table>,
        keys: &[&str],
    ) -> Result<Fields<'a>, ConfigError> {
        let unknown = table
            .get_ref()
            .iter()
            .filter(|(k, _)| !keys.contains(&k.as_str()))
            .min_by_key(|(_, v)| v.span().start);
        if let Some((key, value)) = unknown {
            let message = unknown_key(key, keys);
            return Err(ctx.at(value.span(), format!("{name}: {message}")));
        }
        Ok(Fields {
            ctx,
            name,
            table: table.get_ref(),
        })
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<toml::Value>> {
        self.table.get(key)
    }

    /// `key`'s text and where it is, if given; anything but a string is an error.
    fn string(&self, key: &str) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.get_ref() {
            toml::Value::String(s) => Ok(Some((s.as_str(), v.span()))),
            other => Err(self.wrong(key, v, "invalid type", other, "a string")),
        }
    }

    /// `key` as a port number (0 included: the caller refuses it with its own message).
    fn port(&self, key: &str) -> Result<Option<(u16, Range<usize>)>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let expected = "an integer from 0 to 65535";
        match v.get_ref() {
            toml::Value::Integer(i) => match u16::try_from(*i) {
                Ok(p) => Ok(Some((p, v.span()))),
                Err(_) => Err(self.wrong(key, v, "invalid value", v.get_ref(), expected)),
            },
            other => Err(self.wrong(key, v, "invalid type", other, expected)),
        }
    }

    /// `key`'s value as a table, if given.
    fn table(&self, key: &str) -> Result<Option<Spanned<Table>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.get_ref() {
            toml::Value::Table(t) => {
                // (a sub-table's values carry no position of their own: they are placed on the
                // line of the table itself)
                let table = t
                    .iter()
                    .map(|(k, x)| (k.clone(), Spanned::new(v.span(), x.clone())))
                    .collect();
                Ok(Some(Spanned::new(v.span(), table)))
            }
            other => Err(self.wrong(key, v, "invalid type", other, "a table")),
        }
    }

    fn wrong(
        &self,
        key: &str,
        at: &Spanned<toml::Value>,
        what: &str,
        got: &toml::Value,
        expected: &str,
    ) -> ConfigError {
        let got = match got {
            toml::Value::String(s) => format!("string {s:?}"),
            toml::Value::Array(_) => "array".to_string(),
            toml::Value::Table(_) => "table".to_string(),
            other => format!("{} `{other}`", other.type_str()),
        };
        let message = format!("{} {key}: {what}: {got}, expected {expected}", self.name);
        self.ctx.at(at.span(), message)
    }
}

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

    /// A parse or type error, named by the top-level setting (of `top`) whose value it is in.
    fn toml_error(&self, e: &toml::de::Error, top: Option<&Table>) -> ConfigError {
        let message = humanize_types(e.message().trim());
        let Some(span) = e.span() else {
            return ConfigError::new(format!("{}: {message}", self.origin));
        };
        let key = top
            .into_iter()
            .flatten()
            .find(|(_, v)| v.span().contains(&span.start))
            .map(|(k, _)| k.as_str());
        match key {
            Some(k @ ("server" | "peer")) => self.at(
                span,
                format!("{k}: {message} (write one [[{k}]] table per {k})"),
            ),
            Some(k) => self.at(span, format!("{k}: {message}")),
            None => self.at(span, message),
        }
    }
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
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(human);
        }
    }
    out
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
    entry: &Spanned<Table>,
) -> Result<PeerSpec, ConfigError> {
    let e = Fields::new(ctx, "peer", entry, PEER_KEYS)?;
    let (listen, place_span, at) = match (e.port("port")?, e.string("listen")?) {
        (Some((port, span)), None) => {
            let p = check_port("peer port", port).map_err(|m| ctx.at(span.clone(), m))?;
            (PeerListen::Port(p), span, format!("peer port {p}"))
        }
        (None, Some((listen, span))) => {
            let addr = parse_listen("peer listen", listen).map_err(|m| ctx.at(span.clone(), m))?;
            (PeerListen::Addr(addr), span, format!("peer listen {listen:?}"))
        }
        (Some((_, span)), Some(_)) => {
            return Err(ctx.at(
                span,
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
    let (public_key, span) = e.string("public_key")?.ok_or_else(|| {
        ctx.at(
            entry.span(),
            "peer: missing public_key = \"...\" (the responder's base64 public key)".to_string(),
        )
    })?;
    let key = parse_key("peer public_key", public_key).map_err(|m| ctx.at(span, m))?;
    let endpoint = match e.string("endpoint")? {
        Some((ep, span)) => {
            Some(parse_endpoint("peer endpoint", ep, "").map_err(|m| ctx.at(span, m))?)
        }
        None => None,
    };
    let uapi = match e.string("uapi")? {
        Some((u, span)) => Some(check_uapi("peer uapi", u).map_err(|m| ctx.at(span, m))?),
        None => None,
    };
    if let (Some(_), Some(u)) = (&endpoint, e.get("uapi")) {
        return Err(ctx.at(
            u.span(),
            "peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"
                .to_string(),
        ));
    }
    let awg = match e.table("awg")? {
        Some(table) => awg_from_file(ctx, &table, "peer ")?,
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
    table: &Spanned<Table>,
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
