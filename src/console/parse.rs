//! The admin console's command language, pure: a Query's text → the commands it holds, or
//! the syntax error to report (42601). Keywords are case-insensitive; commands are separated
//! by `;` (a trailing one is optional); names are bare words (`127.0.0.1:5432`, `eu-1`) or
//! double-quoted; `--` and `/* */` comments are skipped. No I/O, no shared state.

/// What the console shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Clusters,
    Nodes,
    Pools,
    Clients,
    Servers,
    Stats,
    Config,
    Help,
    Version,
}

impl Show {
    pub const ALL: [(&'static str, Show); 9] = [
        ("clusters", Show::Clusters),
        ("nodes", Show::Nodes),
        ("pools", Show::Pools),
        ("clients", Show::Clients),
        ("servers", Show::Servers),
        ("stats", Show::Stats),
        ("config", Show::Config),
        ("help", Show::Help),
        ("version", Show::Version),
    ];
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// Re-read the configuration file, as SIGHUP does.
    Reload,
    /// Hold new batches of a cluster (`None`: every cluster) until `RESUME`.
    Pause(Option<String>),
    Resume(Option<String>),
    /// Take a node out of read routing (`cluster`: only in that cluster; else in every cluster
    /// that has a node of this name).
    Drain {
        cluster: Option<String>,
        node: String,
    },
    Undrain {
        cluster: Option<String>,
        node: String,
    },
    /// `SET name = value` (drivers send some at connect): accepted and ignored.
    Set(String),
}

impl Command {
    /// The CommandComplete tag.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Reload => "RELOAD",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Drain { .. } => "DRAIN",
            Command::Undrain { .. } => "UNDRAIN",
            Command::Set(_) => "SET",
        }
    }
}

/// A command the console does not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word, as written.
    Word(String),
    /// A double-quoted name or a single-quoted string, unquoted.
    Quoted(String),
    Equals,
    Semicolon,
}

impl Token {
    fn keyword(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        }
    }

    fn name(&self) -> Option<String> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
            _ => None,
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ';' => out.push(Token::Semicolon),
            '=' => out.push(Token::Equals),
            '-' if text[at..].starts_with("--") => {
                while chars.next_if(|&(_, c)| c != '\n').is_some() {}
            }
            '/' if text[at..].starts_with("/*") => {
                let end = text[at + 2..]
                    .find("*/")
                    .ok_or_else(|| SyntaxError("unterminated /* comment".into()))?;
                while chars.next_if(|&(i, _)| i < at + 2 + end + 2).is_some() {}
            }
            '"' | '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(SyntaxError(format!(
                                "unterminated quoted text starting at {}",
                                &text[at..]
                            )))
                        }
                        Some((_, q)) if q == c => {
                            if chars.next_if(|&(_, n)| n == c).is_some() {
                                value.push(c);
                            } else {
                                break;
                            }
                        }
                        Some((_, other)) => value.push(other),
                    }
                }
                out.push(Token::Quoted(value));
            }
            _ => {
                let mut word = String::from(c);
                while let Some((_, n)) = chars
                    .next_if(|&(_, n)| !n.is_whitespace() && !matches!(n, ';' | '=' | '"' | '\''))
                {
                    word.push(n);
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// The commands of one Query, in order; empty when it holds none (an empty query).
pub fn parse(text: &str) -> Result<Vec<Command>, SyntaxError> {
    let tokens = tokenize(text)?;
    tokens
        .split(|t| *t == Token::Semicolon)
        .filter(|part| !part.is_empty())
        .map(command)
        .collect()
}

fn unknown(words: &[Token]) -> SyntaxError {
    let text: Vec<String> = words
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("\"{q}\""),
            Token::Equals => "=".into(),
            Token::Semicolon => ";".into(),
        })
        .collect();
    SyntaxError(format!("invalid command \"{}\"", text.join(" ")))
}

fn command(tokens: &[Token]) -> Result<Command, SyntaxError> {
    let verb = tokens[0].keyword().ok_or_else(|| unknown(tokens))?;
    let args = &tokens[1..];
    let names: Option<Vec<String>> = args.iter().map(Token::name).collect();
    let arity = |what: &str| SyntaxError(format!("{} takes {what}", verb.to_ascii_uppercase()));
    match verb.as_str() {
        "show" => {
            let [what] = args else {
                return Err(arity("one of: CLUSTERS, NODES, POOLS, CLIENTS, SERVERS, STATS, CONFIG, HELP, VERSION"));
            };
            let key = what.keyword().ok_or_else(|| unknown(tokens))?;
            Show::ALL
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, s)| Command::Show(*s))
                .ok_or_else(|| SyntaxError(format!("unknown SHOW item \"{key}\"")))
        }
        "reload" if args.is_empty() => Ok(Command::Reload),
        "reload" => Err(arity("no argument")),
        "pause" | "resume" => match names.as_deref() {
            Some([]) | Some([_]) => {
                let cluster = names.and_then(|n| n.into_iter().next());
                Ok(if verb == "pause" {
                    Command::Pause(cluster)
                } else {
                    Command::Resume(cluster)
                })
            }
            _ => Err(arity("at most one cluster name")),
        },
        "drain" | "undrain" => {
            let (cluster, node) = match names.as_deref() {
                Some([node]) => (None, node.clone()),
                Some([cluster, node]) => (Some(cluster.clone()), node.clone()),
                _ => return Err(arity("a node name, optionally after its cluster's name")),
            };
            Ok(if verb == "drain" {
                Command::Drain { cluster, node }
            } else {
                Command::Undrain { cluster, node }
            })
        }
        "set" => match args {
            [name, Token::Equals, value] | [name, Token::Word(_), value]
                if name.name().is_some()
                    && value.name().is_some()
                    && (args[1] == Token::Equals || args[1].keyword().as_deref() == Some("to")) =>
            {
                Ok(Command::Set(name.name().unwrap_or_default()))
            }
            _ => Err(arity("a name, = or TO, and a value")),
        },
        _ => Err(unknown(tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(cluster: Option<&str>, node: &str) -> Command {
        Command::Drain {
            cluster: cluster.map(str::to_owned),
            node: node.to_owned(),
        }
    }

    #[test]
    fn commands_parse_case_insensitively_with_optional_semicolons() {
        let cases: Vec<(&str, Vec<Command>)> = vec![
            ("SHOW NODES", vec![Command::Show(Show::Nodes)]),
            ("show nodes;", vec![Command::Show(Show::Nodes)]),
            ("  Show   Clusters ;  ", vec![Command::Show(Show::Clusters)]),
            ("SHOW pools", vec![Command::Show(Show::Pools)]),
            ("show CLIENTS", vec![Command::Show(Show::Clients)]),
            ("show servers", vec![Command::Show(Show::Servers)]),
            ("show stats", vec![Command::Show(Show::Stats)]),
            ("show config", vec![Command::Show(Show::Config)]),
            ("show help", vec![Command::Show(Show::Help)]),
            ("show version", vec![Command::Show(Show::Version)]),
            ("RELOAD", vec![Command::Reload]),
            ("pause", vec![Command::Pause(None)]),
            ("PAUSE app", vec![Command::Pause(Some("app".into()))]),
            (
                "PAUSE \"My App\"",
                vec![Command::Pause(Some("My App".into()))],
            ),
            ("resume app;", vec![Command::Resume(Some("app".into()))]),
            ("RESUME", vec![Command::Resume(None)]),
            ("DRAIN eu-1", vec![drain(None, "eu-1")]),
            ("drain 127.0.0.1:5433", vec![drain(None, "127.0.0.1:5433")]),
            ("DRAIN app \"eu 1\"", vec![drain(Some("app"), "eu 1")]),
            (
                "UNDRAIN app eu-1",
                vec![Command::Undrain {
                    cluster: Some("app".into()),
                    node: "eu-1".into(),
                }],
            ),
            (
                "SET extra_float_digits = 3",
                vec![Command::Set("extra_float_digits".into())],
            ),
            (
                "set application_name to 'psql'",
                vec![Command::Set("application_name".into())],
            ),
            (
                "set datestyle='ISO'",
                vec![Command::Set("datestyle".into())],
            ),
            (
                "SHOW NODES; SHOW POOLS",
                vec![Command::Show(Show::Nodes), Command::Show(Show::Pools)],
            ),
            (
                "pause app;;resume app;",
                vec![
                    Command::Pause(Some("app".into())),
                    Command::Resume(Some("app".into())),
                ],
            ),
            (
                "-- check\nSHOW /* all */ nodes",
                vec![Command::Show(Show::Nodes)],
            ),
            ("DRAIN \"a;b\"", vec![drain(None, "a;b")]),
            ("DRAIN \"say \"\"hi\"\"\"", vec![drain(None, "say \"hi\"")]),
            ("", vec![]),
            (" ; ;", vec![]),
            ("-- nothing", vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn mistakes_are_syntax_errors_naming_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("SELECT 1", "invalid command \"SELECT 1\""),
            ("SHOW", "SHOW takes one of"),
            ("SHOW NODES POOLS", "SHOW takes one of"),
            ("SHOW everything", "unknown SHOW item \"everything\""),
            ("SHOW \"nodes\"", "invalid command"),
            ("RELOAD now", "RELOAD takes no argument"),
            ("PAUSE a b", "PAUSE takes at most one cluster name"),
            ("DRAIN", "DRAIN takes a node name"),
            ("DRAIN a b c", "DRAIN takes a node name"),
            ("DRAIN =", "DRAIN takes a node name"),
            ("SET x", "SET takes a name"),
            ("SET x y z", "SET takes a name"),
            ("SHOW NODES; FROB", "invalid command \"FROB\""),
            ("PAUSE 'app", "unterminated quoted text"),
            ("/* open", "unterminated /* comment"),
            ("= x", "invalid command \"= x\""),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(SyntaxError(m)) => assert!(m.starts_with(want), "{text:?}: {m}"),
                Ok(c) => panic!("{text:?} parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn tags_are_the_command_names() {
        let tags: Vec<&str> =
            parse("show nodes; reload; pause; resume; drain x; undrain x; set a=b")
                .unwrap()
                .iter()
                .map(Command::tag)
                .collect();
        assert_eq!(
            tags,
            ["SHOW", "RELOAD", "PAUSE", "RESUME", "DRAIN", "UNDRAIN", "SET"]
        );
    }
}
