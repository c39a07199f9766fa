//! Arrow Flight SQL as a client that wants more than it is given would use it: another analyst's
//! ticket, a steward's token, DDL and updates, a handshake with a wrong token. (The tools'
//! own drivers are tested by `.ci/flight_sql_test.py`: ADBC into pandas and Polars.)

use arrow_flight::Ticket;
use arrow_flight::sql::client::FlightSqlServiceClient;
use concord_lab::demo::DemoMember;
use concord_node::store::config::NodeDir;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::three_members;

async fn client(m: &DemoMember, token: &str) -> FlightSqlServiceClient<Channel> {
    let url = m.flight_sql_url.replace("grpc://", "http://");
    let channel = tonic::transport::Endpoint::new(url).expect("url").connect().await.expect("connects");
    let mut c = FlightSqlServiceClient::new(channel);
    c.set_token(token.to_owned());
    c
}

/// The status a call was refused with.
fn refused<T>(r: Result<T, arrow_flight::error::FlightError>, what: &str) -> (Code, String) {
    match r {
        Ok(_) => panic!("{what}: expected a refusal"),
        Err(arrow_flight::error::FlightError::Tonic(s)) => (s.code(), s.message().to_owned()),
        Err(other) => panic!("{what}: expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stay_with_the_token_that_asked_and_only_queries_run() {
    let fed = three_members().await;
    let a = fed.member("alpha").clone();
    let other = concord_node::node::admin::token_create(&NodeDir::new(&a.dir), "analyst").expect("token");
    let mut mine = client(&a, &a.analyst_token).await;
    let mut theirs = client(&a, &other).await;

    // A result is fetched once, by the token that ran the query.
    let info = mine.execute("SELECT count(*) AS n FROM cases".into(), None).await.expect("runs");
    let ticket: Ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    let (code, _) = refused(theirs.do_get(ticket.clone()).await, "another analyst's ticket");
    assert_eq!(code, Code::NotFound);
    let batches: Vec<_> =
        mine.do_get(ticket.clone()).await.expect("stream").try_collect().await.expect("rows");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let (code, _) = refused(mine.do_get(ticket).await, "fetched once");
    assert_eq!(code, Code::NotFound);

    // Other roles, DDL and updates are refused with the API's message and code.
    let mut steward = client(&a, &a.steward_token).await;
    let (code, msg) = refused(steward.execute("SELECT 1".into(), None).await, "a steward");
    assert!(code == Code::PermissionDenied && msg.contains("analyst"), "{code:?} {msg}");
    let (code, msg) = refused(mine.execute("CREATE TABLE t AS SELECT 1".into(), None).await, "DDL");
    assert!(code == Code::InvalidArgument && msg.contains("only queries"), "{code:?} {msg}");
    let (code, msg) = refused(mine.execute("SELECT region FROM cases".into(), None).await, "rows");
    assert!(code == Code::PermissionDenied && msg.ends_with("(policy_refused)"), "{code:?} {msg}");
    let (code, _) = refused(mine.execute_update("DELETE FROM local.cases".into(), None).await, "an update");
    assert_eq!(code, Code::InvalidArgument);

    // A statement of a billion parameters is refused before anything is allocated for them.
    let (code, msg) = refused(mine.prepare("SELECT $1000000000".into(), None).await, "huge placeholder");
    assert!(code == Code::InvalidArgument && msg.contains("$1 to $1000"), "{code:?} {msg}");

    // The handshake takes the token as a Basic password and refuses an unknown one.
    let mut fresh = client(&a, "").await;
    fresh.clear_token();
    fresh.handshake("analyst", &a.analyst_token).await.expect("handshake");
    assert_eq!(fresh.token(), Some(&a.analyst_token));
    fresh.execute("SELECT 1".into(), None).await.expect("runs with the token the handshake gave");
    let mut wrong = client(&a, "").await;
    wrong.clear_token();
    let e = wrong.handshake("analyst", "concord_nobody").await.expect_err("an unknown token");
    assert!(e.to_string().contains("unknown token"), "{e}");
    fed.stop().await;
}
