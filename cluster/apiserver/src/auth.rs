//! Authentication: TLS client certificates (CN = user, O = groups), bearer tokens from the
//! static token file and service-account tokens; then impersonation (`Impersonate-User`,
//! `Impersonate-Group` headers) when the caller may impersonate. Requests without credentials
//! are anonymous (`system:anonymous`); what anyone may do is decided by [`crate::rbac`].

use std::collections::HashMap;
use std::path::Path;

use crate::ApiServer;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups, always including `system:authenticated` for real users.
    pub groups: Vec<String>,
}

impl User {
    /// The anonymous user (only for public endpoints).
    #[must_use]
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// A user with groups; `system:authenticated` is added.
    #[must_use]
    pub fn new(name: impl Into<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Self {
            name: name.into(),
            groups,
        }
    }
}

/// The identity of a TLS client certificate, attached to each request by the listener.
#[derive(Clone, Debug)]
pub struct ClientIdentity(pub User);

/// Reads the user of a client certificate (DER): CN is the name, every O a group.
#[must_use]
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(User::new(name, groups))
}

/// Static bearer tokens, loaded from a Kubernetes-style CSV file:
/// `token,user,uid,"group1,group2"`.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    /// Loads the token file (missing file = no tokens).
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let mut tokens = HashMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut fields = line.splitn(4, ',');
            let (Some(token), Some(user)) = (fields.next(), fields.next()) else {
                continue;
            };
            let _uid = fields.next();
            let groups = fields
                .next()
                .map(|g| {
                    g.trim_matches('"')
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(token.trim().to_owned(), User::new(user.trim(), groups));
        }
        Ok(Self(tokens))
    }

    /// Adds one token.
    pub fn insert(&mut self, token: impl Into<String>, user: User) {
        self.0.insert(token.into(), user);
    }

    /// The user of a token.
    #[must_use]
    pub fn get(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }
}

/// The user of a request, if it carries valid credentials.
#[must_use]
pub fn authenticate(server: &ApiServer, parts: &http::request::Parts) -> Option<User> {
    if let Some(ClientIdentity(user)) = parts.extensions.get::<ClientIdentity>() {
        return Some(user.clone());
    }
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))?
        .trim();
    user_of_token(server, token)
}

/// The user a bearer token stands for: one of the static tokens or a valid service-account
/// token.
#[must_use]
pub fn user_of_token(server: &ApiServer, token: &str) -> Option<User> {
    if token.is_empty() {
        return None;
    }
    if let Some(user) = server.tokens.read().get(token) {
        return Some(user.clone());
    }
    // a service-account token (a JWT: three dot-separated parts)
    if token.split('.').count() == 3 {
        let issuer = server.token_issuer.read().clone()?;
        return issuer
            .verify(token)
            .map(|claims| crate::serviceaccount::user_of(&claims));
    }
    None
}

/// The user a request acts as: `user`, or whom its `Impersonate-*` headers name when `user` may
/// impersonate them (`impersonate` on users, groups, serviceaccounts, uids and userextras, as
/// Kubernetes checks it).
///
/// # Errors
/// 403 when `user` may not impersonate what the headers name, 400 for groups without a user.
pub fn impersonate(
    server: &ApiServer,
    user: User,
    headers: &http::HeaderMap,
) -> Result<User, crate::error::ApiError> {
    use crate::rbac::Attributes;
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let name = values("impersonate-user").first().map(|n| (*n).to_owned());
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid");
    let extras: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(key, value)| {
            let key = key.as_str().strip_prefix("impersonate-extra-")?;
            Some((key, value.to_str().ok()?))
        })
        .collect();
    let Some(name) = name else {
        if groups.is_empty() && uid.is_empty() && extras.is_empty() {
            return Ok(user);
        }
        return Err(crate::error::ApiError::bad_request(
            "requested impersonation of groups, a uid or extra fields without impersonating a user",
        ));
    };
    let account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let asked = match account {
        Some((namespace, account)) => {
            Attributes::resource("impersonate", "", "serviceaccounts", "", namespace, account)
        }
        None => Attributes::resource("impersonate", "", "users", "", "", &name),
    };
    server.authorizer.check(&user, &asked)?;
    for group in &groups {
        server.authorizer.check(
            &user,
            &Attributes::resource("impersonate", "", "groups", "", "", group),
        )?;
    }
    for uid in &uid {
        server.authorizer.check(
            &user,
            &Attributes::resource("impersonate", "authentication.k8s.io", "uids", "", "", uid),
        )?;
    }
    for (key, value) in &extras {
        server.authorizer.check(
            &user,
            &Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                key,
                "",
                value,
            ),
        )?;
    }
    let mut groups: Vec<String> = groups.into_iter().map(str::to_owned).collect();
    if let Some((namespace, _)) = account
        && groups.is_empty()
    {
        groups = vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ];
    }
    if name == "system:anonymous" {
        if !groups.iter().any(|g| g == "system:unauthenticated") {
            groups.push("system:unauthenticated".into());
        }
        return Ok(User { name, groups });
    }
    Ok(User::new(name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(
            &path,
            "abc,admin,1,\"system:masters,dev\"\n# comment\nxyz,bob,2\n",
        )
        .unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let admin = tokens.get("abc").unwrap();
        assert_eq!(admin.name, "admin");
        assert!(admin.groups.contains(&"system:masters".to_string()));
        assert!(admin.groups.contains(&"system:authenticated".to_string()));
        assert_eq!(tokens.get("xyz").unwrap().name, "bob");
        assert!(tokens.get("nope").is_none());
    }
}
