//! The `FabricRaft` handle the agent uses, on the in-memory network with the real redb store:
//! bootstrap, admission and membership through the handle, linearizable reads, and the
//! not-leader answers the agent forwards on. (Raw openraft behaviour is in `cluster.rs`.)

use std::time::Duration;

use consensus::mem_transport::MemNetwork;
use consensus::node::{FabricRaft, ProposeError, RaftSettings};
use consensus::state::{Command, Proposal};
use consensus::{FabricNode, NodeId};

fn node(id: NodeId) -> FabricNode {
    FabricNode {
        addr: format!("10.0.0.{id}:7100"),
        admin_addr: format!("10.0.0.{id}:7443"),
        site: format!("s{id}"),
    }
}

async fn start(net: &MemNetwork, dir: &std::path::Path, id: NodeId) -> FabricRaft {
    let settings = RaftSettings {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(200),
        election_timeout_max: Duration::from_millis(400),
        snapshot_after_logs: 5000,
    };
    let raft = FabricRaft::start(
        id,
        &settings,
        &dir.join(format!("n{id}.redb")),
        net.transport(id),
    )
    .await
    .expect("start");
    net.register(id, raft.raft().clone());
    raft
}

fn note(text: &str) -> Proposal {
    Proposal {
        at_ms: 1,
        actor: "test".into(),
        command: Command::RecordEvent {
            message: text.into(),
        },
        term: None,
    }
}

async fn wait_leader(raft: &FabricRaft, id: NodeId) {
    raft.raft()
        .wait(Some(Duration::from_secs(10)))
        .current_leader(id, "leader known")
        .await
        .expect("leader within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_bootstraps_admits_promotes_removes_and_reads_linearizably() {
    let dir = tempfile::tempdir().expect("tmp");
    let net = MemNetwork::new();
    let n1 = start(&net, dir.path(), 1).await;
    assert!(n1.bootstrap(node(1)).await.expect("bootstrap"));
    assert!(
        !n1.bootstrap(node(1))
            .await
            .expect("second bootstrap is a no-op")
    );
    wait_leader(&n1, 1).await;

    let n2 = start(&net, dir.path(), 2).await;
    let n3 = start(&net, dir.path(), 3).await;
    for id in [2, 3] {
        n1.add_learner(id, node(id)).await.expect("learner");
    }
    assert_eq!(n1.members().learners, [2, 3].into());
    n1.promote(2).await.expect("promote 2");
    n1.promote(3).await.expect("promote 3");
    let m = n1.members();
    assert_eq!(m.voters, [1, 2, 3].into());
    assert_eq!(m.nodes.get(&2), Some(&node(2)));

    n1.propose(note("one"))
        .await
        .expect("commit")
        .expect("apply");
    let seen = n1
        .read_linearizable(|s| s.events.iter().any(|e| e.message == "one"))
        .await
        .expect("read on the leader");
    assert!(seen);

    // A follower answers "not leader" and names the leader; the read index from the leader
    // lets it serve the same read once it has applied that far.
    wait_leader(&n2, 1).await;
    match n2.propose(note("two")).await {
        Err(ProposeError::NotLeader(n)) => assert_eq!(n.leader.map(|(id, _)| id), Some(1)),
        other => panic!("follower accepted a proposal: {other:?}"),
    }
    let index = n1.read_index().await.expect("read index");
    let seen = n2
        .read_at(index, Duration::from_secs(10), |s| {
            s.events.iter().any(|e| e.message == "one")
        })
        .await
        .expect("follower read");
    assert!(seen);

    n1.remove(3).await.expect("remove 3");
    let m = n1.members();
    assert_eq!(m.voters, [1, 2].into());
    assert!(!m.nodes.contains_key(&3));
    n1.propose(note("three"))
        .await
        .expect("commit with two voters")
        .expect("apply");

    n3.shutdown().await;
    n2.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_store_so_the_node_restarts_with_its_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let net = MemNetwork::new();
    let n1 = start(&net, dir.path(), 1).await;
    n1.bootstrap(node(1)).await.expect("bootstrap");
    wait_leader(&n1, 1).await;
    n1.propose(note("kept"))
        .await
        .expect("commit")
        .expect("apply");
    let revision = n1.local_state().revision;
    net.unregister(1);
    n1.shutdown().await;

    let again = start(&net, dir.path(), 1).await;
    assert_eq!(again.local_state().revision, revision);
    assert!(
        again
            .local_state()
            .events
            .iter()
            .any(|e| e.message == "kept")
    );
    wait_leader(&again, 1).await;
    again
        .propose(note("after restart"))
        .await
        .expect("commit")
        .expect("apply");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_never_catches_up_times_out_without_blocking_other_membership_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let net = MemNetwork::new();
    let n1 = start(&net, dir.path(), 1).await;
    n1.bootstrap(node(1)).await.expect("bootstrap");
    wait_leader(&n1, 1).await;
    let n2 = start(&net, dir.path(), 2).await;
    let n3 = start(&net, dir.path(), 3).await;
    let n4 = start(&net, dir.path(), 4).await;
    for id in [2, 3] {
        n1.admit(id, node(id), true, Duration::from_secs(10))
            .await
            .expect("admit");
    }

    // Node 9 asks to join as a voter and then never answers (it is not on the network).
    let catch_up = Duration::from_secs(4);
    let stuck = tokio::spawn({
        let n1 = n1.clone();
        async move { n1.admit(9, node(9), true, catch_up).await }
    });
    n1.raft()
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.membership_config.membership().get_node(&9).is_some(),
            "node 9 is a learner",
        )
        .await
        .expect("node 9 added as a learner");

    // Meanwhile other changes go through, well before the joiner's wait runs out.
    let bound = Duration::from_secs(3);
    tokio::time::timeout(bound, n1.admit(4, node(4), true, bound))
        .await
        .expect("admitting node 4 waited on the stuck joiner")
        .expect("admit 4");
    tokio::time::timeout(bound, n1.remove(3))
        .await
        .expect("removing node 3 waited on the stuck joiner")
        .expect("remove 3");
    assert!(!stuck.is_finished(), "the joiner's wait ended too early");
    let m = n1.members();
    assert_eq!(m.voters, [1, 2, 4].into());
    assert!(m.learners.contains(&9));

    let err = stuck
        .await
        .expect("join task")
        .expect_err("node 9 never caught up");
    assert!(
        matches!(&err, ProposeError::TimedOut { after, .. } if *after == catch_up),
        "{err:?}"
    );
    assert!(err.to_string().contains("node 9 catching up"), "{err}");
    assert!(!n1.members().voters.contains(&9));

    // It asks again (already a learner): it still must catch up before it votes.
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        n1.admit(9, node(9), true, Duration::from_millis(500)),
    )
    .await
    .expect("a second attempt is bounded too")
    .expect_err("still not caught up");
    assert!(matches!(again, ProposeError::TimedOut { .. }), "{again:?}");
    assert!(!n1.members().voters.contains(&9));

    for n in [n4, n3, n2, n1] {
        n.shutdown().await;
    }
}
