//! The runtime's mapping of what a plugin does to an [`Answer`], in process,
//! with tiny components made from WAT (see `test_components.rs`).

use std::time::Duration;

use super::test_components::{Handle, component, runtime};
use super::*;
use crate::protocol::request::Request;

fn terms(limits: Limits) -> Terms {
    Terms {
        limits,
        ..Terms::default()
    }
}

async fn load(handle: Handle, limits: Limits) -> Plugin {
    Plugin::from_bytes(
        &runtime(),
        "test",
        component(&["go"], handle),
        terms(limits),
    )
    .await
    .expect("the test component loads")
}

async fn answer(handle: Handle, limits: Limits) -> (Answer, Session) {
    let plugin = load(handle, limits).await;
    let mut session = Session::default();
    let answer = plugin.call(go(), &mut session).await;
    (answer, session)
}

fn go() -> Request {
    crate::protocol::request::Request::parse(b"go now").expect("a request")
}

#[tokio::test]
async fn load_reads_the_declared_commands() {
    let plugin = Plugin::from_bytes(
        &runtime(),
        "two",
        component(&["a", "b-c"], Handle::Reply("x")),
        Terms::default(),
    )
    .await
    .unwrap();
    let names: Vec<&str> = plugin.commands().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b-c"]);
    assert_eq!(plugin.name(), "two");
}

#[tokio::test]
async fn a_reply_and_a_refusal_keep_the_instance_warm() {
    let (reply, session) = answer(Handle::Reply("done"), Limits::default()).await;
    assert!(matches!(reply, Answer::Reply(text) if text == "done"));
    assert!(session.is_warm());
    let (refusal, session) = answer(Handle::Refuse("no way"), Limits::default()).await;
    assert!(matches!(refusal, Answer::Refusal(text) if text == "no way"));
    assert!(session.is_warm());
}

#[tokio::test]
async fn the_request_reaches_the_plugin() {
    let (reply, _) = answer(Handle::EchoCommand, Limits::default()).await;
    assert!(matches!(reply, Answer::Reply(text) if text == "go"));
}

#[tokio::test]
async fn a_trap_is_a_failure_and_discards_the_instance() {
    let (failure, session) = answer(Handle::Trap, Limits::default()).await;
    assert!(
        matches!(failure, Answer::Failure(CallError::Trapped(_))),
        "{failure:?}"
    );
    assert!(!session.is_warm());
}

#[tokio::test]
async fn a_call_that_never_returns_times_out() {
    let limits = Limits {
        call_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let (failure, session) = answer(Handle::Spin, limits).await;
    assert!(
        matches!(failure, Answer::Failure(CallError::TimedOut(limit)) if limit == Duration::from_millis(50)),
        "{failure:?}"
    );
    assert!(!session.is_warm());
}

#[tokio::test]
async fn growing_past_the_memory_limit_is_out_of_memory() {
    let limits = Limits {
        max_memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let (failure, _) = answer(Handle::GrowMemory, limits).await;
    assert!(
        matches!(failure, Answer::Failure(CallError::OutOfMemory { limit_bytes }) if limit_bytes == 1 << 20),
        "{failure:?}"
    );
}

/// A refused growth the plugin survived is not the cause of a later
/// failure on the same (warm) instance: that one is reported as itself.
#[tokio::test]
async fn a_memory_refusal_survived_earlier_is_not_blamed_for_a_later_trap() {
    let limits = Limits {
        max_memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let plugin = load(Handle::GrowDeniedThenTrap, limits).await;
    let mut session = Session::default();
    let survived = plugin.call(go(), &mut session).await;
    assert!(
        matches!(&survived, Answer::Reply(text) if text == "survived"),
        "{survived:?}"
    );
    assert!(session.is_warm());
    let trapped = plugin.call(go(), &mut session).await;
    assert!(
        matches!(trapped, Answer::Failure(CallError::Trapped(_))),
        "{trapped:?}"
    );
}

/// What the log says of a quarantined plugin's call: a share of its recent
/// calls, not a run of them (see `health.rs`), and how it comes back.
#[test]
fn a_disabled_plugin_is_described_as_quarantine_counts() {
    let said = CallError::Disabled(5).to_string();
    assert!(
        !said.contains("consecutive") && !said.contains("in a row"),
        "{said}"
    );
    assert!(
        said.contains("5 of its recent calls") && said.contains("SIGHUP"),
        "{said}"
    );
}

#[tokio::test]
async fn a_reply_over_the_limit_is_refused_with_its_size() {
    let limits = Limits {
        max_reply_bytes: 100,
        ..Limits::default()
    };
    let (failure, session) = answer(Handle::ReplyOfLen(101), limits).await;
    assert!(
        matches!(
            failure,
            Answer::Failure(CallError::ReplyTooLarge {
                len: 101,
                limit: 100
            })
        ),
        "{failure:?}"
    );
    assert!(!session.is_warm());
}

#[tokio::test]
async fn consecutive_failures_quarantine_and_a_new_setup_starts_clean() {
    let limits = Limits {
        quarantine_after: 2,
        ..Limits::default()
    };
    let plugin = load(Handle::Trap, limits.clone()).await;
    let mut session = Session::default();
    for _ in 0..2 {
        let failure = plugin.call(go(), &mut session).await;
        assert!(matches!(failure, Answer::Failure(CallError::Trapped(_))));
    }
    let disabled = plugin.call(go(), &mut session).await;
    assert!(
        matches!(disabled, Answer::Failure(CallError::Disabled(2))),
        "{disabled:?}"
    );
    let renewed = plugin.with_terms(terms(limits));
    let failure = renewed.call(go(), &mut session).await;
    assert!(matches!(failure, Answer::Failure(CallError::Trapped(_))));
}

#[tokio::test]
async fn files_that_are_not_components_are_named_for_what_they_are() {
    let runtime = runtime();
    let not_wasm = Plugin::from_bytes(&runtime, "x", b"hello".to_vec(), Terms::default()).await;
    assert!(matches!(not_wasm, Err(LoadError::NotWasm)));
    // An empty core module: the magic, version 1, layer 0.
    let core = b"\0asm\x01\0\0\0".to_vec();
    let core = Plugin::from_bytes(&runtime, "x", core, Terms::default()).await;
    assert!(matches!(core, Err(LoadError::CoreModule)));
    let spaced = component(&["two words"], Handle::Reply("x"));
    let spaced = Plugin::from_bytes(&runtime, "x", spaced, Terms::default()).await;
    assert!(matches!(spaced, Err(LoadError::InvalidCommandName(name)) if name == "two words"));
}

/// `max_memory_mib` bounds all of an instance's memories together, not
/// each (a component with eight memories once held 577 MB under 64 MiB).
#[tokio::test]
async fn the_memory_limit_bounds_all_memories_of_an_instance() {
    let limits = Limits {
        max_memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let within = Handle::GrowExtraMemories {
        memories: 4,
        pages: 8,
    };
    let (reply, _) = answer(within, limits.clone()).await;
    assert!(
        matches!(&reply, Answer::Reply(text) if text == "grown"),
        "{reply:?}"
    );
    let beyond = Handle::GrowExtraMemories {
        memories: 4,
        pages: 16,
    };
    let (failure, _) = answer(beyond, limits).await;
    assert!(
        matches!(failure, Answer::Failure(CallError::OutOfMemory { .. })),
        "{failure:?}"
    );
}

/// A component over the per-instance ceiling is refused at load, naming it.
#[tokio::test]
async fn a_plugin_needing_more_than_the_ceiling_is_refused_at_load() {
    let huge = component(
        &["go"],
        Handle::GrowExtraMemories {
            memories: MAX_MEMORIES_PER_INSTANCE,
            pages: 1,
        },
    );
    let refused = Plugin::from_bytes(&runtime(), "huge", huge, Terms::default()).await;
    let Err(err) = refused else {
        panic!("a component with 9 memories loaded");
    };
    assert!(matches!(err, LoadError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("8 memories"), "{err}");
}

/// At `max_instances`, a call needing another instance waits for one within
/// its deadline, then is told the plugin is busy; a warm one is reused.
#[tokio::test]
async fn at_its_instance_bound_a_plugin_is_busy_for_new_instances() {
    let limits = Limits {
        max_instances: 1,
        call_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let plugin = load(Handle::Reply("ok"), limits).await;
    let mut holder = Session::default();
    assert!(matches!(
        plugin.call(go(), &mut holder).await,
        Answer::Reply(_)
    ));
    assert!(holder.is_warm());
    let mut other = Session::default();
    let busy = plugin.call(go(), &mut other).await;
    assert!(
        matches!(busy, Answer::Failure(CallError::InstancesInUse(1))),
        "{busy:?}"
    );
    assert!(matches!(
        plugin.call(go(), &mut holder).await,
        Answer::Reply(_)
    ));
    holder.release();
    assert!(matches!(
        plugin.call(go(), &mut other).await,
        Answer::Reply(_)
    ));
}

/// A call whose deadline passes while it waits for its turn never ran: it
/// is `busy`, and does not count towards quarantine (a burst of clients of a
/// slow plugin must not get it disabled).
#[tokio::test]
async fn calls_that_never_got_to_run_are_busy_not_failures() {
    let limits = Limits {
        max_concurrent_calls: 1,
        quarantine_after: 5,
        call_timeout: Duration::from_millis(60),
        ..Limits::default()
    };
    // Several ms of work a call: a hundred of them cannot all run in 60 ms.
    let plugin = Arc::new(load(Handle::Work(10_000_000), limits).await);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let plugin = plugin.clone();
            tokio::spawn(async move { plugin.call(go(), &mut Session::default()).await })
        })
        .collect();
    let mut never_ran = 0;
    for call in calls {
        match call.await.unwrap() {
            Answer::Failure(CallError::NeverRan(_)) => never_ran += 1,
            Answer::Reply(_) | Answer::Failure(CallError::TimedOut(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(never_ran >= 50, "{never_ran} never ran");
    assert!(!plugin.is_disabled(), "quarantined by calls that never ran");
}
