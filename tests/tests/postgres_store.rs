//! The gateway on PostgreSQL (`store.url = "postgres://…"`): the Apple round trip over real TLS,
//! checked through the API and in the database itself; and `mdm-gateway migrate`.
//!
//! Needs `MDM_TEST_POSTGRES_URL` (`bash .ci/pg-setup.sh` prints one); fails without it unless
//! `MDM_SKIP_POSTGRES=1`. Each test works in a schema of its own.

use mdm_core::CommandStatus;
use mdm_gateway::store::suite::PostgresSchema;
use mdm_gateway::store::{EnrollmentState, PoolSettings, PostgresStore, Store};
use mdm_tests::Harness;
use serde_json::{Value, json};
use sqlx_core::connection::Connection as _;
use sqlx_core::row::Row as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_round_trip_on_postgres() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let url = schema.url.clone();
    let h = Harness::start_with(|c| c.store.url = Some(url)).await;
    assert!(
        !h.dir.path().join("data/gateway.db").exists(),
        "no SQLite database is created when the store is PostgreSQL"
    );

    let dev = h.device("A1B2C3D4-0000-4000-8000-00000000BEEF");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let (code, device) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(code, 200, "{device}");
    assert_eq!(device["enrollment"]["state"], "enrolled");

    let (code, queued) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    assert_eq!(code, 202, "{queued}");
    let command_id = queued["command_id"].as_str().expect("command id").to_owned();

    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, command_id);
    assert_eq!(handled[0].1, "DeviceInformation");
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged", "{status}");

    let api_events: Vec<Value> = h.events().await;

    // What PostgreSQL holds, read by a second store on the same schema (another instance).
    let other = PostgresStore::open(&schema.url, PoolSettings::default()).await.expect("second store");
    let device_id = id.parse().expect("device id");
    let enrollment = other.enrollment(&device_id).await.expect("read").expect("enrollment stored");
    assert_eq!(enrollment.state, EnrollmentState::Enrolled);
    assert!(enrollment.cert_sha256.is_some(), "bound to its identity certificate");
    assert_eq!(enrollment.push.as_ref().map(|p| p.topic.as_str()), Some(dev.topic.as_str()));
    assert_eq!(enrollment.inventory.serial_number.as_deref(), Some(dev.serial.as_str()));
    let records = other.command(&command_id).await.expect("read");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, CommandStatus::Acknowledged);
    assert_eq!(records[0].sent_count, 1);
    assert_eq!(records[0].request_type, "DeviceInformation");
    assert!(other.pending(&device_id, 10).await.expect("pending").is_empty());

    let logged = other.events_after(0, 1000).await.expect("events");
    let seqs: Vec<i64> = logged.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=logged.len() as i64).collect::<Vec<_>>(), "positions without gaps");
    assert_eq!(other.last_event_seq().await.expect("seq"), logged.len() as i64);
    let stored: Vec<Value> = logged.iter().map(|e| serde_json::from_str(&e.json).expect("event json")).collect();
    assert_eq!(stored, api_events, "the API serves the log as stored");
    let types: Vec<&str> =
        stored.iter().filter(|e| e["device_id"] == id.as_str()).map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(
        types,
        [
            "device.authenticated",
            "device.inventory",
            "device.enrolled",
            "command.queued",
            "device.checked_in",
            "command.sent",
            "device.checked_in",
            "command.acknowledged",
            "device.inventory",
        ]
    );

    // The rows themselves: the schema under test, not a default one.
    let mut conn = sqlx_postgres::PgConnection::connect(&schema.url).await.expect("connect");
    let row = sqlx_core::query::query("SELECT state, platform FROM enrollments WHERE device_id = $1")
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .expect("enrollment row");
    assert_eq!(row.get::<String, _>(0), "enrolled");
    assert_eq!(row.get::<String, _>(1), "apple");
    let row = sqlx_core::query::query(
        "SELECT current_schema(), (SELECT count(*) FROM commands), (SELECT last_seq FROM event_log_head)",
    )
    .fetch_one(&mut conn)
    .await
    .expect("counts");
    assert_eq!(row.get::<String, _>(0), schema.name);
    assert_eq!(row.get::<i64, _>(1), 1);
    assert_eq!(row.get::<i64, _>(2), logged.len() as i64);
    let _ = conn.close().await;
    other.close().await;
    h.stop().await;
}
