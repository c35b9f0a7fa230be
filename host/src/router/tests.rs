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
        .serve(
            request(message),
            &mut (),
            &mut Session::default(),
            &Client::anyone(),
        )
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
            .serve(first, &mut buffered, &mut session, &Client::anyone())
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
    ];
    assert_eq!(replies[..7], expected);
    let help: Vec<&str> = replies[7].lines().map(|line| &line[..5]).collect();
    assert_eq!(help, ["one (", "three", "two ("]);
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
    let (a, b) = (
        plugin("a", &["one", "help"], Handle::Reply("x")).await,
        plugin("b", &["two", "auth"], Handle::Reply("y")).await,
    );
    let (one, two) = (
        format!("one (a {}): ", a.version()),
        format!("two (b {}): ", b.version()),
    );
    let router = Router::new([a, b]);
    assert_eq!(send(&router, "help").await, format!("{one}\n{two}"));
    let only_two = Client {
        permits: &|command: &str| command == "two",
        arrival: Arrival::default(),
    };
    let reply = router
        .serve(request("help"), &mut (), &mut Session::default(), &only_two)
        .await
        .next();
    assert_eq!(reply.expect("a reply").as_str(), two);
    assert_eq!(send(&router, "auth").await, "error: unknown command 'auth'");
}

/// `serving`'s commands with `candidate` on trial for every connection
/// arriving from now on.
fn on_trial(
    serving: &Arc<Plugin>,
    candidate: &Arc<Plugin>,
) -> (Router, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (verdicts, receiver) = tokio::sync::mpsc::unbounded_channel();
    let canary = Canary {
        plugin: candidate.clone(),
        trial: Arc::new(Trial::start(serving.name(), 100, verdicts)),
    };
    let serving = Serving {
        plugin: serving.clone(),
        canary: Some(canary),
    };
    (Router::new([serving]), receiver)
}

async fn send_as(
    router: &Router,
    session: &mut Session,
    arrival: Arrival,
    message: &str,
) -> String {
    let client = Client {
        permits: &|_| true,
        arrival,
    };
    let mut replies = router
        .serve(request(message), &mut (), session, &client)
        .await;
    replies.next().expect("a reply").as_str().to_owned()
}

#[tokio::test]
async fn a_trial_serves_later_connections_and_ends_at_the_candidates_fifth_failure() {
    let serving = plugin("p", &["go"], Handle::Reply("old")).await;
    let candidate = plugin("p", &["go"], Handle::Trap).await;
    let before = Arrival::next();
    let (router, mut verdicts) = on_trial(&serving, &candidate);
    let after = Arrival::next();
    let (mut old_session, mut new_session) = (Session::default(), Session::default());
    assert_eq!(
        send_as(&router, &mut old_session, before, "go").await,
        "old"
    );
    for _ in 0..4 {
        let reply = send_as(&router, &mut new_session, after, "go").await;
        assert_eq!(reply, "error: plugin 'p' failed");
    }
    assert!(verdicts.try_recv().is_err(), "four failures are not enough");
    let fifth = send_as(&router, &mut new_session, after, "go").await;
    assert_eq!(fifth, "error: plugin 'p' failed");
    assert_eq!(verdicts.try_recv().ok().as_deref(), Some("p"));
    let next = send_as(&router, &mut new_session, after, "go").await;
    assert_eq!(next, "old", "the candidate's connections go back at once");
}

#[tokio::test]
async fn pipelined_commands_run_in_the_version_serving_their_connection() {
    let batched = batched_component(&["go"], Handle::EchoCommand, ServeBatch::EchoAll);
    let serving = Plugin::from_bytes(&runtime(), "p", batched, Terms::default()).await;
    let serving = Arc::new(serving.expect("the test component loads"));
    let candidate = plugin("p", &["go"], Handle::Reply("new")).await;
    let before = Arrival::next();
    let (router, _verdicts) = on_trial(&serving, &candidate);
    let after = Arrival::next();
    let turn = async |arrival| {
        let client = Client {
            permits: &|_| true,
            arrival,
        };
        let mut buffered: std::collections::VecDeque<Request> =
            ["go", "go"].iter().map(|m| request(m)).collect();
        let first = buffered.pop_front().expect("a request");
        let mut session = Session::default();
        let replies = router.serve(first, &mut buffered, &mut session, &client);
        let replies: Vec<String> = replies.await.map(|r| r.as_str().to_owned()).collect();
        replies
    };
    assert_eq!(
        turn(before).await,
        ["go", "go"],
        "the serving version batches"
    );
    assert_eq!(
        turn(after).await,
        ["new"],
        "the candidate serves one a turn"
    );
}
