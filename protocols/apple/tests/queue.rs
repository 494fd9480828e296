//! Queue selection rules, table-tested from vectors/queue/cases.json.

mod common;

use mdm_apple::{QueueItem, ReportStatus, Selection, Trigger, select_next};

#[test]
fn queue_table() {
    let cases = common::own_json("queue/cases.json");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let items: Vec<QueueItem> = serde_json::from_value(case["items"].clone()).unwrap();
        let trigger: Trigger = serde_json::from_value(case["trigger"].clone()).unwrap();
        let now = case["now"].as_i64().unwrap();
        let expect: Selection = serde_json::from_value(case["expect"].clone()).unwrap();
        assert_eq!(select_next(&items, trigger, now), expect, "{name}");
    }
}

#[test]
fn trigger_from_status() {
    assert_eq!(Trigger::from_status(&ReportStatus::Idle), Trigger::Idle);
    for s in [ReportStatus::Acknowledged, ReportStatus::Error, ReportStatus::NotNow, ReportStatus::Unknown("x".into())]
    {
        assert_eq!(Trigger::from_status(&s), Trigger::Report);
    }
}
