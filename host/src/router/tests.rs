//! The router as a connection uses it: one entry, every kind of command.

use super::*;
use crate::plugin::test_components::{Handle, ServeBatch, batched_component, component, runtime};
use crate::plugin::{Limits, Terms};

async fn plugin(name: &str, commands: &[&str], handle: Handle) -> Arc<Plugin> {
    plugin_with(name, commands, handle, Limits::default()).await
}

async fn plugin_with(name: &str, commands: &[&str], handle: Handle, limits: Limits) -> Arc<Plugin> {
    let terms = Terms {
        limits,
        ..Terms::default()
    };
    let bytes = component(commands, handle);
    let plugin = Plugin::from_bytes(&runtime(), name, bytes, terms).await;
    Arc::new(plugin.expect("the test component loads"))
}

fn request(message: &str) -> Request {
    Request::parse(message.as_bytes()).expect("a request")
}

/// Sends `message` alone, as a client that may run every command.
async fn send(router: &Router, message: &str) -> String {
    let mut replies = router
        .serve(request(message), &mut (), &mut Session::default(), &|_| {
            true
        })
        .await;
    let reply = replies.next().expect("a reply");
    assert!(replies.next().is_none(), "one reply for one command");
    reply.as_str().to_owned()
}

/// Sends `messages` as one client pipelining them, its connection
/// serving each turn as the server does: what each turn served, and the
/// replies of all of them in order.
async fn pipeline(router: &Router, messages: &[&str]) -> (Vec<usize>, Vec<String>) {
    let mut buffered: std::collections::VecDeque<Request> =
        messages.iter().map(|message| request(message)).collect();
    let mut session = Session::default();
    let (mut turns, mut replies) = (Vec::new(), Vec::new());
    while let Some(first) = buffered.pop_front() {
        let served = router
            .serve(first, &mut buffered, &mut session, &|_| true)
            .await;
        let before = replies.len();
        replies.extend(served.map(|reply| reply.as_str().to_owned()));
        turns.push(replies.len() - before);
    }
    (turns, replies)
}

impl Pipeline for std::collections::VecDeque<Request> {
    fn next_buffered(&mut self) -> Option<Request> {
        self.pop_front()
    }

    fn put_back(&mut self, request: Request) {
        self.push_front(request);
    }
}

#[tokio::test]
async fn each_command_goes_to_the_plugin_that_declared_it() {
    let router = Router::new([
        plugin("a", &["one"], Handle::Reply("from a")).await,
        plugin("b", &["two", "three"], Handle::EchoCommand).await,
    ]);
    assert_eq!(send(&router, "one").await, "from a");
    assert_eq!(send(&router, "three x y").await, "three");
}

/// The path a connection takes: a plugin that serves batches gets the
/// commands pipelined behind the first for it in one turn, in order;
/// another plugin's command, `help` or an unknown one ends the turn and
/// is served next; a plugin that does not batch serves one a turn.
#[tokio::test]
async fn pipelined_commands_for_one_plugin_are_served_together_in_order() {
    let batched = Plugin::from_bytes(
        &runtime(),
        "a",
        batched_component(&["one", "two"], Handle::EchoCommand, ServeBatch::EchoAll),
        Terms::default(),
    )
    .await
    .expect("the test component loads");
    let router = Router::new([
        Arc::new(batched),
        plugin("b", &["three"], Handle::EchoCommand).await,
    ]);
    let (turns, replies) = pipeline(
        &router,
        &["one", "two", "one", "three", "three", "nope", "one", "help"],
    )
    .await;
    let expected = [
        "one",
        "two",
        "one",
        "three",
        "three",
        "error: unknown command 'nope'",
        "one",
        "one (a): \nthree (b): \ntwo (a): ",
    ];
    assert_eq!(replies, expected);
    assert_eq!(turns, [3, 1, 1, 1, 1, 1]);
}

#[tokio::test]
async fn an_unknown_command_is_named_in_the_error() {
    let router = Router::new([plugin("a", &["one"], Handle::Reply("x")).await]);
    assert_eq!(
        send(&router, "nope 1").await,
        "error: unknown command 'nope'"
    );
}

#[tokio::test]
async fn of_two_claims_the_first_plugin_keeps_the_command() {
    let router = Router::new([
        plugin("first", &["on"], Handle::Reply("first")).await,
        plugin("second", &["on", "only"], Handle::Reply("second")).await,
    ]);
    assert_eq!(send(&router, "on").await, "first");
    assert_eq!(send(&router, "only").await, "second");
}

#[tokio::test]
async fn refusals_and_failures_become_error_replies_naming_the_plugin() {
    let limits = Limits {
        max_reply_bytes: 10,
        ..Limits::default()
    };
    let router = Router::new([
        plugin("picky", &["ask"], Handle::Refuse("not today")).await,
        plugin("crashy", &["crash"], Handle::Trap).await,
        plugin_with("chatty", &["talk"], Handle::ReplyOfLen(11), limits).await,
    ]);
    assert_eq!(send(&router, "ask").await, "error: not today");
    assert_eq!(
        send(&router, "crash").await,
        "error: plugin 'crashy' failed"
    );
    assert_eq!(
        send(&router, "talk").await,
        "error: plugin 'chatty' reply too large (11 bytes, limit 10)"
    );
}

#[tokio::test]
async fn a_reply_holding_the_delimiter_is_not_framed() {
    let router = Router::new([plugin("sly", &["sly"], Handle::Reply("a<EOF>b")).await]);
    assert_eq!(
        send(&router, "sly").await,
        "error: plugin 'sly' returned a reply containing the delimiter"
    );
}

#[tokio::test]
async fn help_lists_what_the_client_may_run_and_cannot_be_claimed() {
    let router = Router::new([
        plugin("a", &["one", "help"], Handle::Reply("x")).await,
        plugin("b", &["two", "auth"], Handle::Reply("y")).await,
    ]);
    assert_eq!(send(&router, "help").await, "one (a): \ntwo (b): ");
    let only_two = |command: &str| command == "two";
    let reply = router
        .serve(request("help"), &mut (), &mut Session::default(), &only_two)
        .await
        .next();
    assert_eq!(reply.expect("a reply").as_str(), "two (b): ");
    assert_eq!(send(&router, "auth").await, "error: unknown command 'auth'");
}
