//! `${VAR}` expansion in the configuration's few expandable fields (region, passwords, node
//! hosts, the admin token, `instance_id` and peer addresses): one file serves a fleet whose deployments differ by
//! environment. Pure over the `env` lookup it is given; secrets are never quoted in problems.

use super::{Config, Problem};

impl Config {
    pub(super) fn expand_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<Problem>,
    ) {
        // One file for a fleet: each deployment says where it runs (Kubernetes: an env var).
        expand_field(&mut self.region, "region", Shown::InErrors, env, problems);
        for (i, user) in self.users.iter_mut().enumerate() {
            expand_field(
                &mut user.password,
                &format!("users[{i}].password"),
                Shown::Never,
                env,
                problems,
            );
        }
        if let Some(id) = &mut self.instance_id {
            expand_field(&mut id.0, "instance_id", Shown::InErrors, env, problems);
        }
        for (i, peer) in self.peers.iter_mut().enumerate() {
            expand_field(
                &mut peer.address,
                &format!("peers[{i}].address"),
                Shown::InErrors,
                env,
                problems,
            );
        }
        if let Some(token) = &mut self.admin_token {
            expand_field(&mut token.0, "admin_token", Shown::Never, env, problems);
        }
        for (name, cluster) in &mut self.clusters {
            let prefix = format!("clusters.{name}");
            expand_field(
                &mut cluster.primary.host,
                &format!("{prefix}.primary.host"),
                Shown::InErrors,
                env,
                problems,
            );
            for (i, node) in cluster.replicas.iter_mut().enumerate() {
                expand_field(
                    &mut node.host,
                    &format!("{prefix}.replicas[{i}].host"),
                    Shown::InErrors,
                    env,
                    problems,
                );
            }
        }
    }
}

/// Whether a field's text may appear in a problem about it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    InErrors,
    /// A secret: problems describe it without quoting any of it.
    Never,
}

fn expand_field(
    value: &mut String,
    path: &str,
    shown: Shown,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match expand(value, env) {
        Ok(expanded) => *value = expanded,
        Err(e) => {
            let message = match shown {
                Shown::InErrors => e.describe(value),
                Shown::Never => e.describe_secret(value),
            };
            problems.push(Problem::new(path, message));
        }
    }
}

/// Why `${…}` expansion failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// A `${` without its `}`.
    Unterminated,
    /// `${…}` around something that is not a variable name.
    BadName(String),
    /// A variable that is not set.
    Unset(String),
}

impl ExpandError {
    /// The problem, quoting the field's text `input` where that helps.
    pub fn describe(&self, input: &str) -> String {
        match self {
            ExpandError::Unterminated => format!("unterminated ${{ in {input:?}"),
            ExpandError::BadName(name) => format!("invalid environment variable name {name:?}"),
            ExpandError::Unset(name) => format!("environment variable {name} is not set"),
        }
    }

    /// The problem for a secret (a password): nothing of `input` is quoted, except the variable
    /// name of a field that is exactly one `${NAME}` reference.
    pub fn describe_secret(&self, input: &str) -> String {
        const LITERAL: &str = "the value is not shown; write $${ for a literal ${";
        match self {
            ExpandError::Unset(name) if input == format!("${{{name}}}") => {
                format!("environment variable {name} is not set")
            }
            ExpandError::Unset(_) => {
                format!("refers to an environment variable that is not set ({LITERAL})")
            }
            ExpandError::Unterminated => format!("unterminated ${{ ({LITERAL})"),
            ExpandError::BadName(_) => {
                format!(
                    "${{…}} around something that is not an environment variable name ({LITERAL})"
                )
            }
        }
    }
}

/// Replaces each `${NAME}` with the variable's value; `$${` stands for a literal `${`.
pub fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or(ExpandError::Unterminated)?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError::BadName(name.to_owned()));
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
