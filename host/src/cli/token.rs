//! `plugboard token`: a new random token, and the config lines that grant it.

/// The token on the first line (for scripts: `plugboard token | head -1`),
/// then a `[[auth.tokens]]` entry with its hash, ready to paste.
pub fn new_entry(name: &str, commands: &[String]) -> anyhow::Result<String> {
    anyhow::ensure!(!name.trim().is_empty(), "--name must not be empty");
    let (token, sha256) = crate::net::auth::new_token()?;
    let commands = if commands.is_empty() {
        vec!["*".to_owned()]
    } else {
        commands.to_vec()
    };
    Ok(format!(
        "{token}\n\n\
         # Give the token above to the client (`plugboard send --token`, or\n\
         # PLUGBOARD_TOKEN); add these lines to the server's config. Only the\n\
         # token's hash is stored there.\n\
         [[auth.tokens]]\n\
         name = {name:?}\n\
         sha256 = {sha256:?}\n\
         commands = {commands:?}\n"
    ))
}
