//! Commands plugins call (`commands.call`, see `plugin/nested.rs`): run
//! through the table current at the call, as a client's command would be,
//! after the checks that keep chains of calls finite.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use super::{Client, Routes};
use crate::plugin::{Chain, Dispatch, NestedReply, Session};
use crate::protocol::reply::ERROR_PREFIX;
use crate::protocol::request::{RESERVED, Request};

/// How deep calls may nest by default: a scene of scenes of devices, and
/// room for one more.
pub const DEFAULT_MAX_CALL_DEPTH: usize = 4;

/// Runs the commands plugins call.
pub struct Dispatcher {
    /// Weak: the runtime holds the dispatcher and the table holds the
    /// runtime's plugins; a strong reference would keep them all (and the
    /// state store, unclosed) alive past the server's end.
    routes: Weak<Routes>,
    max_depth: usize,
}

impl Dispatcher {
    /// Runs them through `routes`, nested at most `max_depth` calls deep.
    pub fn new(routes: &Arc<Routes>, max_depth: usize) -> Self {
        Self {
            routes: Arc::downgrade(routes),
            max_depth,
        }
    }

    /// Why `line`, called by the last command of `chain`, may not run.
    /// The chain's first line is the client's (or the schedule's) own:
    /// the calls nested so far are the rest.
    fn refusal(&self, line: &str, chain: &Chain) -> Option<String> {
        if chain.contains(line) {
            return Some(format!(
                "call cycle: '{line}' is already running in {}",
                chain.render()
            ));
        }
        if chain.len().saturating_sub(1) >= self.max_depth {
            return Some(format!(
                "calls nest at most {} deep (max_call_depth): {} -> {line}",
                self.max_depth,
                chain.render()
            ));
        }
        None
    }
}

impl Dispatch for Dispatcher {
    fn dispatch(
        &self,
        line: String,
        chain: Chain,
    ) -> Pin<Box<dyn Future<Output = NestedReply> + Send + 'static>> {
        let refused = self.refusal(&line, &chain);
        let routes = self.routes.upgrade().map(|routes| routes.load_full());
        Box::pin(async move {
            if let Some(why) = refused {
                return Err(why);
            }
            let Some(routes) = routes else {
                return Err("the server is stopping".into());
            };
            let request = Request::parse(line.as_bytes()).map_err(|err| err.to_string())?;
            if RESERVED.contains(&request.command.as_str()) {
                return Err(format!(
                    "'{}' is answered to a connection, not to a plugin",
                    request.command
                ));
            }
            // The called plugin adds its own line as it calls further.
            let mut session = Session::nested(chain);
            let client = Client::anyone();
            let reply = routes
                .serve(request, &mut (), &mut session, &client)
                .await
                .next()
                .ok_or_else(|| "no reply".to_owned())?;
            match reply.as_str().strip_prefix(ERROR_PREFIX) {
                Some(message) => Err(message.to_owned()),
                None => Ok(reply.as_str().to_owned()),
            }
        })
    }
}
