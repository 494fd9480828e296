//! The behaviour every [`Store`] implementation must have, as tests that take a fresh, empty
//! store. Only the [`Store`] trait is used, so the same tests run against SQLite and PostgreSQL.
//!
//! An implementation runs them all, one `#[tokio::test]` each, with
//! `crate::store_suite!(make_harness);` where `async fn make_harness() -> Harness` opens a new,
//! empty store.

use std::sync::Arc;
use std::time::Duration;

use mdm_core::{CommandStatus, DeviceId, Event, EventType, Inventory, Platform};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::{
    AndroidEnterprise, AndroidOperation, AndroidPolicyCommand, AndroidSignup, CommandUpdate, DeadLetter,
    DeclarationsChange, DeclarationsToken, EnrollTicket, Enrollment, EnrollmentState, EnrollmentWrite, IdentifierKind,
    NewCommand, NewScepChallenge, OmaDmSession, PubSubDelivery, PubSubOutcome, PushCert, PushInfo, ScepCertificate,
    ScepChallenge, ScepRecord, Store, StoreError, StoredDeclaration, TicketStatus, WindowsCertificate, WindowsRecord,
};

/// A fresh store for one test, with what the tests need besides the trait.
pub struct Harness {
    pub store: Box<dyn Store>,
    /// A second handle on the same database (another connection pool, or for SQLite another
    /// writer): what another gateway instance would open. For the cluster tests.
    pub second: Box<dyn Store>,
    /// The implementation's "events were appended" signal.
    pub notifier: Arc<Notify>,
    /// Kept alive for the test (a temporary directory, a throwaway database...).
    pub guard: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("store", &self.store).finish_non_exhaustive()
    }
}

/// What a harness function returns: a [`Harness`], or `Option<Harness>` where `None` skips the
/// test (a database server the test needs is deliberately not there).
pub trait IntoHarness {
    fn into_harness(self) -> Option<Harness>;
}

impl IntoHarness for Harness {
    fn into_harness(self) -> Option<Harness> {
        Some(self)
    }
}

impl IntoHarness for Option<Harness> {
    fn into_harness(self) -> Option<Harness> {
        self
    }
}

/// Expands to one `#[tokio::test]` per suite test, each on a store from `$harness().await`.
#[macro_export]
macro_rules! store_suite {
    ($harness:path) => {
        $crate::store_suite!(@each $harness;
            enrollment_round_trip,
            enrollment_by_cert_ignores_unenrolled,
            set_state_with_children,
            touch_records_last_seen,
            list_enrollments_keyset_pagination,
            enqueue_and_pending_order,
            request_snapshot_matches_separate_reads,
            final_statuses_leave_pending,
            idempotency_conflict_stores_nothing,
            duplicate_command_stores_nothing,
            update_command_compare_and_set,
            due_for_expiry,
            events_are_logged_in_order,
            events_are_atomic_with_state,
            sink_cursors,
            prune_events_by_id_and_position,
            push_certs_upsert_by_topic,
            scep_challenge_round_trip,
            scep_certificate_consumes_its_challenge_once,
            scep_unavailable_challenge_stores_nothing,
            scep_renewals_are_found_by_what_they_renew,
            scep_ticket_status,
            scep_renewal_without_challenge,
            declarations_put_replace_delete,
            declaration_changes_are_atomic,
            declarations_are_per_channel,
            bootstrap_token_set_and_clear,
            enroll_tickets_lifecycle,
            omadm_session_compare_and_set,
            windows_enrollment_binds_its_certificate,
            windows_renewal_is_compare_and_set,
            windows_record_is_atomic,
            windows_devices_of_user,
            pubsub_dedupe_and_device_order,
            pubsub_applies_command_updates,
            pubsub_dead_letters,
            pubsub_message_ids_are_pruned,
            android_operations,
            users_devices_are_counted_across_platforms,
            corporate_identifiers_replace_and_enroll,
            android_queued_commands_in_order,
            android_signup_completes_once,
            pubsub_view_reads_what_intake_needs,
            pubsub_report_writes_only_its_columns,
            event_batches_keep_their_order,
            android_policy_commands,
        );

        $crate::store_suite!(@pair $harness;
            cluster_leases_are_exclusive_and_expire,
            cluster_sink_cursor_is_fenced_by_the_lease,
            cluster_android_claims_are_exclusive,
            cluster_policy_commands_are_claimed_in_order,
            cluster_abandoned_claims_follow_heartbeats,
            cluster_budget_is_shared,
            cluster_device_order_across_handles,
        );

        #[tokio::test]
        async fn notifier_fires_after_append() {
            let Some(h) = $crate::store::suite::IntoHarness::into_harness($harness().await) else { return };
            $crate::store::suite::notifier_fires_after_append(&*h.store, &h.notifier).await;
        }
    };
    (@pair $harness:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(h) = $crate::store::suite::IntoHarness::into_harness($harness().await) else { return };
                $crate::store::suite::$name(&*h.store, &*h.second).await;
            }
        )*
    };
    (@each $harness:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(h) = $crate::store::suite::IntoHarness::into_harness($harness().await) else { return };
                $crate::store::suite::$name(&*h.store).await;
            }
        )*
    };
}

// ---- fixtures -------------------------------------------------------------------------------

pub fn id(s: &str) -> DeviceId {
    s.parse().expect("test device id")
}

/// An event whose JSON carries its id, so a mix-up of bodies is visible.
pub fn event(event_id: &str, device: &DeviceId, event_type: EventType, command_id: Option<&str>) -> Event {
    Event {
        id: event_id.to_owned(),
        time: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
        event_type,
        platform: device.platform(),
        device_id: device.clone(),
        command_id: command_id.map(str::to_owned),
        data: json!({ "event": event_id, "nested": { "list": [1, 2.5, null, "x"] } }),
        raw: None,
    }
}

pub fn new_command(device: &DeviceId, command_id: &str, priority: i32) -> NewCommand {
    NewCommand {
        command_id: command_id.to_owned(),
        device_id: device.clone(),
        request_type: "DeviceInformation".to_owned(),
        normalised: None,
        payload: format!("<plist>{command_id}</plist>").into_bytes(),
        priority,
        expires_at: None,
        idempotency_key: None,
        created_at: 100,
    }
}

fn update<'a>(
    device: &'a DeviceId,
    command_id: &'a str,
    from: &'a [CommandStatus],
    to: CommandStatus,
    now: i64,
) -> CommandUpdate<'a> {
    CommandUpdate { device_id: device, command_id, from, to, result: None, error: None, now }
}

async fn event_ids(store: &dyn Store) -> Vec<String> {
    store
        .events_after(0, 1000)
        .await
        .expect("events_after")
        .into_iter()
        .map(|e| {
            let ev: Event = serde_json::from_str(&e.json).expect("stored event JSON");
            ev.id
        })
        .collect()
}

async fn pending_ids(store: &dyn Store, device: &DeviceId) -> Vec<String> {
    store.pending(device, 100).await.expect("pending").into_iter().map(|c| c.command_id).collect()
}

fn full_enrollment() -> Enrollment {
    let mut attributes = serde_json::Map::new();
    attributes.insert("enrollment_type".into(), json!("Device"));
    attributes.insert("user".into(), json!({ "short_name": "ann", "uid": 501, "admin": false }));
    Enrollment {
        device_id: id("apple:66ADE930-5FDF:501"),
        parent: Some(id("apple:66ADE930-5FDF")),
        state: EnrollmentState::Enrolled,
        cert_sha256: Some("ab".repeat(32)),
        push: Some(PushInfo { token: vec![0, 1, 2, 255], magic: "MAGIC-1".into(), topic: "com.apple.mgmt.X".into() }),
        unlock_token: Some(vec![9; 64]),
        // Present but empty must not come back as absent.
        bootstrap_token: Some(Vec::new()),
        inventory: Inventory {
            serial_number: Some("C02XYZ".into()),
            udid: Some("66ADE930-5FDF".into()),
            model: Some("MacBookPro18,1".into()),
            model_name: Some("MacBook Pro".into()),
            product_name: Some("MacBookPro18,1".into()),
            os_name: Some("macOS".into()),
            os_version: Some("14.4".into()),
            build_version: Some("23E214".into()),
            device_name: Some("Ann’s Mac — ünïcödé".into()),
            imei: Some("35 209900 176148 1".into()),
            meid: Some("A0000000000000".into()),
            storage_capacity_bytes: Some(u64::MAX),
            storage_available_bytes: Some(0),
            battery_level: Some(0.37),
            wifi_mac: Some("aa:bb:cc:dd:ee:ff".into()),
            bluetooth_mac: Some("aa:bb:cc:dd:ee:00".into()),
            hostname: Some("ann-mac".into()),
            supervised: Some(true),
            manufacturer: Some("Apple".into()),
            encrypted: Some(true),
            compliant: Some(false),
            ownership: Some("corporate".into()),
            enrolled_user: Some("ann@example.com".into()),
        },
        attributes,
        enrolled_at: Some(1_700_000_000),
        last_seen: Some(1_700_000_100),
        checked_in_event_at: Some(-5),
        created_at: 1_699_999_999,
        updated_at: 1_700_000_200,
    }
}

// ---- enrollments ----------------------------------------------------------------------------

pub async fn enrollment_round_trip(store: &dyn Store) {
    store.ping().await.expect("ping");
    let full = full_enrollment();
    assert_eq!(store.enrollment(&full.device_id).await.expect("read"), None);
    store.save_enrollment(&full, &[]).await.expect("save");
    assert_eq!(store.enrollment(&full.device_id).await.expect("read").as_ref(), Some(&full));

    // Replacing with every optional field absent clears them all, except the bootstrap token,
    // which only set_bootstrap_token changes (a stale copy saved by another request must not
    // undo an escrow).
    let mut bare = Enrollment::new(full.device_id.clone(), 5);
    bare.updated_at = 6;
    store.save_enrollment(&bare, &[]).await.expect("replace");
    let kept = Enrollment { bootstrap_token: full.bootstrap_token.clone(), ..bare.clone() };
    assert_eq!(store.enrollment(&full.device_id).await.expect("read"), Some(kept));
    assert!(store.set_bootstrap_token(&full.device_id, None, 6, &[]).await.expect("clear"));
    assert_eq!(store.enrollment(&full.device_id).await.expect("read"), Some(bare.clone()));

    // Push info whose parts are all empty is still present.
    let mut empty_push = bare.clone();
    empty_push.push = Some(PushInfo::default());
    empty_push.unlock_token = Some(Vec::new());
    empty_push.state = EnrollmentState::Unenrolled;
    store.save_enrollment(&empty_push, &[]).await.expect("save");
    assert_eq!(store.enrollment(&full.device_id).await.expect("read"), Some(empty_push));

    // Other platforms' ids are stored as is.
    for raw in ["windows:7F1C-22", "android:enterprises/LC01:devices/3a"] {
        let e = Enrollment::new(id(raw), 1);
        store.save_enrollment(&e, &[]).await.expect("save");
        assert_eq!(store.enrollment(&e.device_id).await.expect("read"), Some(e));
    }
    assert_eq!(store.count_enrollments().await.expect("count"), 3);
}

pub async fn enrollment_by_cert_ignores_unenrolled(store: &dyn Store) {
    let device = id("apple:CERT-DEV");
    let user = id("apple:CERT-DEV:501");
    let mut d = Enrollment::new(device.clone(), 1);
    d.cert_sha256 = Some("aaaa".into());
    let mut u = Enrollment::new(user.clone(), 1);
    u.parent = Some(device.clone());
    u.cert_sha256 = Some("aaaa".into());
    u.state = EnrollmentState::Enrolled;
    u.updated_at = 50;
    store.save_enrollment(&u, &[]).await.expect("save");

    assert_eq!(store.enrollment_by_cert("aaaa").await.expect("read"), Some(user.clone()));
    // The device channel wins over its user channel, even when older.
    store.save_enrollment(&d, &[]).await.expect("save");
    assert_eq!(store.enrollment_by_cert("aaaa").await.expect("read"), Some(device.clone()));
    assert_eq!(store.enrollment_by_cert("bbbb").await.expect("read"), None);

    d.state = EnrollmentState::Unenrolled;
    store.save_enrollment(&d, &[]).await.expect("save");
    assert_eq!(store.enrollment_by_cert("aaaa").await.expect("read"), Some(user.clone()));
    u.state = EnrollmentState::Unenrolled;
    store.save_enrollment(&u, &[]).await.expect("save");
    assert_eq!(store.enrollment_by_cert("aaaa").await.expect("read"), None);

    // Authenticated (not yet enrolled) counts: only unenrolled is ignored.
    let mut other = Enrollment::new(id("windows:W1"), 1);
    other.cert_sha256 = Some("cccc".into());
    store.save_enrollment(&other, &[]).await.expect("save");
    assert_eq!(store.enrollment_by_cert("cccc").await.expect("read"), Some(other.device_id));
}

pub async fn set_state_with_children(store: &dyn Store) {
    let parent = id("apple:P");
    let children = [id("apple:P:501"), id("apple:P:502")];
    let stranger = id("apple:Q");
    let strangers_child = id("apple:Q:501");
    // An id that merely starts like the parent's must not be caught.
    let lookalike = id("apple:PP");
    for d in [&parent, &stranger, &lookalike] {
        let mut e = Enrollment::new(d.clone(), 1);
        e.state = EnrollmentState::Enrolled;
        store.save_enrollment(&e, &[]).await.expect("save");
    }
    for (c, p) in [(&children[0], &parent), (&children[1], &parent), (&strangers_child, &stranger)] {
        let mut e = Enrollment::new(c.clone(), 1);
        e.parent = Some(p.clone());
        e.state = EnrollmentState::Enrolled;
        store.save_enrollment(&e, &[]).await.expect("save");
    }

    let ev = event("ev-unenroll", &parent, EventType::DEVICE_UNENROLLED, None);
    let n = store.set_state_with_children(&parent, EnrollmentState::Unenrolled, 77, &[ev]).await.expect("set state");
    assert_eq!(n, 3);
    for d in [&parent, &children[0], &children[1]] {
        let e = store.enrollment(d).await.expect("read").expect("present");
        assert_eq!((e.state, e.updated_at), (EnrollmentState::Unenrolled, 77), "{d}");
    }
    for d in [&stranger, &strangers_child, &lookalike] {
        let e = store.enrollment(d).await.expect("read").expect("present");
        assert_eq!((e.state, e.updated_at), (EnrollmentState::Enrolled, 1), "{d}");
    }
    assert_eq!(event_ids(store).await, ["ev-unenroll"]);

    // A child on its own: only itself.
    let n = store
        .set_state_with_children(&strangers_child, EnrollmentState::Authenticated, 80, &[])
        .await
        .expect("set state");
    assert_eq!(n, 1);
    assert_eq!(store.enrollment(&stranger).await.expect("read").expect("present").state, EnrollmentState::Enrolled);
    // Unknown device: nothing changes, and it is not an error.
    let n = store
        .set_state_with_children(&id("apple:NOBODY"), EnrollmentState::Unenrolled, 80, &[])
        .await
        .expect("set state");
    assert_eq!(n, 0);
}

pub async fn touch_records_last_seen(store: &dyn Store) {
    let d = id("apple:TOUCH");
    let e = Enrollment::new(d.clone(), 10);
    store.save_enrollment(&e, &[]).await.expect("save");
    store.touch(&d, 99).await.expect("touch");
    let got = store.enrollment(&d).await.expect("read").expect("present");
    assert_eq!((got.last_seen, got.updated_at, got.created_at), (Some(99), 99, 10));
    assert_eq!(got.inventory, e.inventory);
    // Touching an unknown device is harmless and creates nothing.
    store.touch(&id("apple:GHOST"), 99).await.expect("touch");
    assert_eq!(store.enrollment(&id("apple:GHOST")).await.expect("read"), None);
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
}

pub async fn list_enrollments_keyset_pagination(store: &dyn Store) {
    let ids = [
        "apple:B",
        "apple:A",
        "apple:A:501",
        "apple:C",
        "apple:D",
        "windows:W2",
        "windows:W1",
        "android:e1:d1",
        "apple:E",
    ];
    for raw in ids {
        store.save_enrollment(&Enrollment::new(id(raw), 1), &[]).await.expect("save");
    }
    assert_eq!(store.count_enrollments().await.expect("count"), ids.len() as u64);

    async fn all_pages(store: &dyn Store, platform: Option<Platform>, page: u32) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let batch = store.list_enrollments(platform, after.as_deref(), page).await.expect("list");
            assert!(batch.len() <= page as usize, "page over limit");
            let Some(last) = batch.last() else { break };
            let next = last.device_id.to_string();
            // Pages must move strictly forward, or a client paging through would never end.
            assert!(after.as_deref().is_none_or(|a| a < next.as_str()), "page did not advance past {after:?}");
            after = Some(next);
            seen.extend(batch.into_iter().map(|e| e.device_id.to_string()));
        }
        seen
    }

    let mut everything: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    everything.sort();
    assert_eq!(all_pages(store, None, 2).await, everything);
    assert_eq!(all_pages(store, None, 100).await, everything);
    assert_eq!(
        all_pages(store, Some(Platform::Apple), 2).await,
        ["apple:A", "apple:A:501", "apple:B", "apple:C", "apple:D", "apple:E"]
    );
    assert_eq!(all_pages(store, Some(Platform::Windows), 1).await, ["windows:W1", "windows:W2"]);
    assert_eq!(all_pages(store, Some(Platform::Android), 5).await, ["android:e1:d1"]);

    let page = store.list_enrollments(Some(Platform::Apple), Some("apple:B"), 2).await.expect("list");
    let page: Vec<_> = page.iter().map(|e| e.device_id.as_str()).collect();
    assert_eq!(page, ["apple:C", "apple:D"]);
    // `after` need not be an existing id.
    let page = store.list_enrollments(None, Some("apple:Bz"), 1).await.expect("list");
    assert_eq!(page[0].device_id.as_str(), "apple:C");
    assert!(store.list_enrollments(None, Some("zzz"), 10).await.expect("list").is_empty());
    assert!(store.list_enrollments(None, None, 0).await.expect("list").is_empty());
}

// ---- commands -------------------------------------------------------------------------------

pub async fn enqueue_and_pending_order(store: &dyn Store) {
    let d = id("apple:QUEUE");
    let other = id("apple:OTHER");
    let mut rich = new_command(&d, "rich", 5);
    rich.normalised = Some(json!({ "type": "lock", "pin": "123456" }));
    rich.expires_at = Some(10_000);
    rich.idempotency_key = Some("idem-rich".into());
    rich.payload = vec![0, 159, 146, 150, 255];
    let batch = vec![
        new_command(&d, "low-old", 0),
        new_command(&other, "shared-id", 9),
        new_command(&d, "high-old", 5),
        new_command(&d, "low-new", 0),
        rich.clone(),
        new_command(&d, "negative", -1),
        new_command(&d, "shared-id", 0),
    ];
    let ev = event("ev-q", &d, EventType::COMMAND_QUEUED, Some("rich"));
    store.enqueue(&batch, &[ev]).await.expect("enqueue");
    store.enqueue(&[new_command(&d, "high-newest", 5)], &[]).await.expect("enqueue");

    assert_eq!(
        pending_ids(store, &d).await,
        ["high-old", "rich", "high-newest", "low-old", "low-new", "shared-id", "negative"]
    );
    assert_eq!(pending_ids(store, &other).await, ["shared-id"]);
    assert!(pending_ids(store, &id("apple:EMPTY")).await.is_empty());
    let two: Vec<_> = store.pending(&d, 2).await.expect("pending").into_iter().map(|c| c.command_id).collect();
    assert_eq!(two, ["high-old", "rich"]);

    // Every field comes back; seq follows insertion order across devices and calls.
    let rec = store.command_for_device(&d, "rich").await.expect("read").expect("present");
    assert_eq!(
        (&rec.command_id, &rec.device_id, rec.request_type.as_str(), &rec.normalised, &rec.payload),
        (&rich.command_id, &d, "DeviceInformation", &rich.normalised, &rich.payload)
    );
    assert_eq!((rec.priority, rec.status, rec.expires_at), (5, CommandStatus::Queued, Some(10_000)));
    assert_eq!((rec.idempotency_key.as_deref(), &rec.result, &rec.error), (Some("idem-rich"), &None, &None));
    assert_eq!((rec.created_at, rec.updated_at, rec.sent_count), (100, 100, 0));
    assert_eq!(store.command_by_idempotency_key("idem-rich").await.expect("read"), Some(rec.clone()));
    assert_eq!(store.command_by_idempotency_key("nope").await.expect("read"), None);
    assert_eq!(store.command_for_device(&other, "rich").await.expect("read"), None);

    let mut seqs = Vec::new();
    for (c, dev) in
        [("low-old", &d), ("shared-id", &other), ("high-old", &d), ("rich", &d), ("shared-id", &d), ("high-newest", &d)]
    {
        seqs.push(store.command_for_device(dev, c).await.expect("read").expect("present").seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq must grow with insertion: {seqs:?}");

    let shared = store.command("shared-id").await.expect("read");
    let devices: Vec<_> = shared.iter().map(|c| c.device_id.as_str()).collect();
    assert_eq!(devices, ["apple:OTHER", "apple:QUEUE"]);
    assert!(store.command("missing").await.expect("read").is_empty());
    assert_eq!(event_ids(store).await, ["ev-q"]);

    // An empty batch is fine and stores nothing.
    store.enqueue(&[], &[]).await.expect("empty enqueue");
    assert_eq!(pending_ids(store, &d).await.len(), 7);
}

pub async fn request_snapshot_matches_separate_reads(store: &dyn Store) {
    let device = id("apple:SNAP");
    let user = id("apple:SNAP:user-1");
    let mut parent = Enrollment::new(device.clone(), 10);
    parent.state = EnrollmentState::Enrolled;
    parent.cert_sha256 = Some("ab".repeat(32));
    let mut child = Enrollment::new(user.clone(), 11);
    child.parent = Some(device.clone());
    store.save_enrollment(&parent, &[]).await.expect("save parent");
    store.save_enrollment(&child, &[]).await.expect("save child");
    store
        .enqueue(
            &[new_command(&device, "d-low", 0), new_command(&user, "u-1", 0), new_command(&device, "d-high", 3)],
            &[],
        )
        .await
        .expect("enqueue");

    let snap = store.request_snapshot(&device, &device, 10).await.expect("snapshot");
    assert_eq!(snap.channel, store.enrollment(&device).await.expect("read"));
    assert!(snap.channel.is_some());
    assert_eq!(snap.user, None, "device channel request has no user enrollment");
    assert_eq!(snap.pending, store.pending(&device, 10).await.expect("pending"));
    let ids: Vec<_> = snap.pending.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, ["d-high", "d-low"]);

    let snap = store.request_snapshot(&device, &user, 1).await.expect("snapshot");
    assert_eq!(snap.channel, store.enrollment(&device).await.expect("read"));
    assert_eq!(snap.user, store.enrollment(&user).await.expect("read"));
    assert!(snap.user.is_some());
    let ids: Vec<_> = snap.pending.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, ["u-1"]);

    let unknown = id("apple:NOPE");
    let snap = store.request_snapshot(&unknown, &id("apple:NOPE:u"), 10).await.expect("snapshot");
    assert_eq!((snap.channel, snap.user, snap.pending.len()), (None, None, 0));
}

pub async fn prune_events_by_id_and_position(store: &dyn Store) {
    let d = id("apple:PRUNE");
    // Ids sort like the UUIDv7 the gateway makes: older first.
    let events: Vec<Event> =
        ["a1", "a2", "a3", "b1", "b2"].iter().map(|i| event(i, &d, EventType::DEVICE_CHECKED_IN, None)).collect();
    store.append_events(&events).await.expect("append");
    let seqs: Vec<i64> = store.events_after(0, 10).await.expect("read").iter().map(|e| e.seq).collect();
    // Older than "b" but only below the third position (undelivered events stay): a1, a2.
    assert_eq!(store.prune_events("b", seqs[2], 100).await.expect("prune"), 2);
    let left: Vec<i64> = store.events_after(0, 10).await.expect("read").iter().map(|e| e.seq).collect();
    assert_eq!(left, seqs[2..]);
    // The limit bounds one call; positions are never reused.
    assert_eq!(store.prune_events("z", i64::MAX, 1).await.expect("prune"), 1);
    assert_eq!(store.prune_events("z", i64::MAX, 100).await.expect("prune"), 2);
    assert!(store.events_after(0, 10).await.expect("read").is_empty());
    assert_eq!(store.last_event_seq().await.expect("seq"), seqs[4], "pruning does not lower the position");
    store.append_events(&[event("c1", &d, EventType::DEVICE_CHECKED_IN, None)]).await.expect("append");
    let after = store.events_after(0, 10).await.expect("read");
    assert!(after[0].seq > seqs[4], "a pruned position is not reused");
}

pub async fn final_statuses_leave_pending(store: &dyn Store) {
    let d = id("apple:FINAL");
    let names = ["ack", "err", "exp", "sent", "notnow", "queued"];
    let batch: Vec<_> = names.iter().map(|n| new_command(&d, n, 0)).collect();
    store.enqueue(&batch, &[]).await.expect("enqueue");
    let q = [CommandStatus::Queued];
    for (n, to) in [
        ("ack", CommandStatus::Acknowledged),
        ("err", CommandStatus::Error),
        ("exp", CommandStatus::Expired),
        ("sent", CommandStatus::Sent),
        ("notnow", CommandStatus::NotNow),
    ] {
        assert!(store.update_command(update(&d, n, &q, to, 200), &[]).await.expect("update"), "{n}");
        assert_eq!(store.command_for_device(&d, n).await.expect("read").expect("present").status, to);
    }
    assert_eq!(pending_ids(store, &d).await, ["sent", "notnow", "queued"]);
}

pub async fn idempotency_conflict_stores_nothing(store: &dyn Store) {
    let d = id("apple:IDEM");
    let mut first = new_command(&d, "first", 0);
    first.idempotency_key = Some("K".into());
    store.enqueue(&[first], &[event("ev-1", &d, EventType::COMMAND_QUEUED, Some("first"))]).await.expect("enqueue");

    let mut reuse = new_command(&d, "second", 0);
    reuse.idempotency_key = Some("K".into());
    let r = store
        .enqueue(
            &[new_command(&d, "innocent", 0), reuse],
            &[event("ev-2", &d, EventType::COMMAND_QUEUED, Some("second"))],
        )
        .await;
    assert!(matches!(&r, Err(StoreError::IdempotencyConflict(k)) if k == "K"), "{r:?}");

    // The same key twice within one batch.
    let mut a = new_command(&d, "a", 0);
    a.idempotency_key = Some("L".into());
    let mut b = new_command(&id("apple:IDEM2"), "b", 0);
    b.idempotency_key = Some("L".into());
    let r = store.enqueue(&[a, b], &[event("ev-3", &d, EventType::COMMAND_QUEUED, None)]).await;
    assert!(matches!(&r, Err(StoreError::IdempotencyConflict(k)) if k == "L"), "{r:?}");

    assert_eq!(pending_ids(store, &d).await, ["first"]);
    assert!(pending_ids(store, &id("apple:IDEM2")).await.is_empty());
    for c in ["innocent", "second", "a", "b"] {
        assert!(store.command(c).await.expect("read").is_empty(), "{c} must not be stored");
    }
    assert_eq!(store.command_by_idempotency_key("L").await.expect("read"), None);
    assert_eq!(event_ids(store).await, ["ev-1"]);
    assert_eq!(store.last_event_seq().await.expect("seq"), 1);
}

pub async fn duplicate_command_stores_nothing(store: &dyn Store) {
    let d = id("apple:DUP");
    store.enqueue(&[new_command(&d, "c1", 0)], &[]).await.expect("enqueue");
    let mut keyed = new_command(&d, "c2", 0);
    keyed.idempotency_key = Some("fresh-key".into());
    let r = store
        .enqueue(&[keyed, new_command(&d, "c1", 3)], &[event("ev-dup", &d, EventType::COMMAND_QUEUED, None)])
        .await;
    assert!(matches!(&r, Err(StoreError::DuplicateCommand(c)) if c == "c1"), "{r:?}");
    // Within one batch too.
    let r = store.enqueue(&[new_command(&d, "c3", 0), new_command(&d, "c3", 0)], &[]).await;
    assert!(matches!(&r, Err(StoreError::DuplicateCommand(c)) if c == "c3"), "{r:?}");

    assert_eq!(pending_ids(store, &d).await, ["c1"]);
    assert_eq!(store.command_for_device(&d, "c1").await.expect("read").expect("present").priority, 0);
    assert_eq!(store.command_by_idempotency_key("fresh-key").await.expect("read"), None);
    assert!(event_ids(store).await.is_empty());
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);

    // The key of the failed call was not consumed.
    let mut retry = new_command(&d, "c2", 0);
    retry.idempotency_key = Some("fresh-key".into());
    store.enqueue(&[retry], &[]).await.expect("retry succeeds");
}

pub async fn update_command_compare_and_set(store: &dyn Store) {
    let d = id("apple:CAS");
    store.enqueue(&[new_command(&d, "c", 0)], &[]).await.expect("enqueue");
    let before = store.command_for_device(&d, "c").await.expect("read").expect("present");

    // Wrong `from`: nothing changes, no event.
    let wrong = [CommandStatus::Sent, CommandStatus::NotNow];
    let ev = event("ev-wrong", &d, EventType::COMMAND_ACKNOWLEDGED, Some("c"));
    let applied =
        store.update_command(update(&d, "c", &wrong, CommandStatus::Acknowledged, 300), &[ev]).await.expect("update");
    assert!(!applied);
    assert_eq!(store.command_for_device(&d, "c").await.expect("read"), Some(before.clone()));
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
    // Unknown command or device, or no `from` at all: false too, and still no event.
    let any = [CommandStatus::Queued];
    let ev = [event("ev-never", &d, EventType::COMMAND_SENT, Some("c"))];
    assert!(!store.update_command(update(&d, "nope", &any, CommandStatus::Sent, 1), &ev).await.expect("update"));
    assert!(
        !store.update_command(update(&id("apple:X"), "c", &any, CommandStatus::Sent, 1), &ev).await.expect("update")
    );
    assert!(!store.update_command(update(&d, "c", &[], CommandStatus::Sent, 1), &ev).await.expect("update"));
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
    assert_eq!(store.command_for_device(&d, "c").await.expect("read"), Some(before.clone()));

    // Queued -> Sent -> NotNow -> Sent -> Acknowledged.
    let ev = event("ev-sent-1", &d, EventType::COMMAND_SENT, Some("c"));
    assert!(
        store
            .update_command(
                update(&d, "c", &[CommandStatus::Queued, CommandStatus::NotNow], CommandStatus::Sent, 301),
                &[ev]
            )
            .await
            .expect("update")
    );
    let r = store.command_for_device(&d, "c").await.expect("read").expect("present");
    assert_eq!((r.status, r.sent_count, r.updated_at, r.seq), (CommandStatus::Sent, 1, 301, before.seq));

    let mut u = update(&d, "c", &[CommandStatus::Sent], CommandStatus::NotNow, 302);
    u.result = Some(json!({ "Status": "NotNow" }));
    assert!(
        store.update_command(u, &[event("ev-nn", &d, EventType::COMMAND_NOT_NOW, Some("c"))]).await.expect("update")
    );
    let r = store.command_for_device(&d, "c").await.expect("read").expect("present");
    assert_eq!((r.status, r.sent_count, &r.result), (CommandStatus::NotNow, 1, &Some(json!({ "Status": "NotNow" }))));

    assert!(
        store
            .update_command(
                update(&d, "c", &[CommandStatus::Queued, CommandStatus::NotNow], CommandStatus::Sent, 303),
                &[]
            )
            .await
            .expect("update")
    );
    // A repeated transition sees the new status and does not apply twice.
    assert!(
        !store
            .update_command(
                update(&d, "c", &[CommandStatus::Queued, CommandStatus::NotNow], CommandStatus::Sent, 304),
                &[]
            )
            .await
            .expect("update")
    );
    let r = store.command_for_device(&d, "c").await.expect("read").expect("present");
    assert_eq!((r.status, r.sent_count, r.updated_at, &r.result), (CommandStatus::Sent, 2, 303, &None));

    let mut u = update(&d, "c", &[CommandStatus::Sent], CommandStatus::Error, 305);
    u.result = Some(json!({ "Status": "Error" }));
    u.error = Some(json!({ "code": 12021, "domain": "MCMDMErrorDomain" }));
    assert!(
        store
            .update_command(u.clone(), &[event("ev-err", &d, EventType::COMMAND_ERROR, Some("c"))])
            .await
            .expect("update")
    );
    let r = store.command_for_device(&d, "c").await.expect("read").expect("present");
    assert_eq!((r.status, r.sent_count, r.updated_at), (CommandStatus::Error, 2, 305));
    assert_eq!((r.result, r.error), (u.result, u.error));
    assert_eq!(event_ids(store).await, ["ev-sent-1", "ev-nn", "ev-err"]);
}

pub async fn due_for_expiry(store: &dyn Store) {
    let d = id("apple:EXP");
    let e = id("windows:EXP");
    let mut cmds = Vec::new();
    for (dev, name, expires) in [
        (&d, "late", Some(150)),
        (&d, "never", None),
        (&e, "early", Some(100)),
        (&d, "future", Some(500)),
        (&d, "exact", Some(200)),
        (&d, "done", Some(50)),
        (&e, "early-too", Some(100)),
    ] {
        let mut c = new_command(dev, name, 0);
        c.expires_at = expires;
        cmds.push(c);
    }
    store.enqueue(&cmds, &[]).await.expect("enqueue");
    assert!(
        store
            .update_command(update(&d, "done", &[CommandStatus::Queued], CommandStatus::Acknowledged, 60), &[])
            .await
            .expect("ack")
    );
    assert!(
        store
            .update_command(update(&d, "late", &[CommandStatus::Queued], CommandStatus::Sent, 60), &[])
            .await
            .expect("sent")
    );

    let due: Vec<_> = store.due_for_expiry(200, 100).await.expect("due").into_iter().map(|c| c.command_id).collect();
    assert_eq!(due, ["early", "early-too", "late", "exact"]);
    let due: Vec<_> = store.due_for_expiry(200, 2).await.expect("due").into_iter().map(|c| c.command_id).collect();
    assert_eq!(due, ["early", "early-too"]);
    assert!(store.due_for_expiry(99, 100).await.expect("due").is_empty());

    assert!(
        store
            .update_command(update(&e, "early", &[CommandStatus::Queued], CommandStatus::Expired, 200), &[])
            .await
            .expect("expire")
    );
    let due: Vec<_> = store.due_for_expiry(10_000, 100).await.expect("due").into_iter().map(|c| c.command_id).collect();
    assert_eq!(due, ["early-too", "late", "exact", "future"]);
}

// ---- event log ------------------------------------------------------------------------------

pub async fn events_are_logged_in_order(store: &dyn Store) {
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
    assert!(store.events_after(0, 10).await.expect("read").is_empty());
    store.append_events(&[]).await.expect("empty append");
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);

    let a = id("apple:EV-A");
    let b = id("android:ent:EV-B");
    let mut with_raw = event("e3", &b, EventType::other("vendor.custom"), Some("cmd-9"));
    with_raw.raw = Some(mdm_core::RawMessage { content_type: "application/json".into(), body_b64: "e30=".into() });
    let batch1 =
        [event("e1", &a, EventType::DEVICE_ENROLLED, None), event("e2", &a, EventType::DEVICE_CHECKED_IN, None)];
    let batch2 = [with_raw, event("e4", &a, EventType::PUSH_FAILED, None)];
    store.append_events(&batch1).await.expect("append");
    store.append_events(&batch2).await.expect("append");
    let all: Vec<Event> = batch1.iter().chain(batch2.iter()).cloned().collect();

    let logged = store.events_after(0, 100).await.expect("read");
    assert_eq!(logged.len(), 4);
    for (l, e) in logged.iter().zip(&all) {
        assert_eq!(l.json, serde_json::to_string(e).expect("serialise"), "stored exactly as serialised");
        assert_eq!(l.device_id, e.device_id.as_str());
        assert_eq!(&serde_json::from_str::<Event>(&l.json).expect("parse"), e);
    }
    assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq), "{logged:?}");
    assert!(logged[0].seq > 0);
    assert_eq!(store.last_event_seq().await.expect("seq"), logged[3].seq);

    // Reading is repeatable and resumes from any position.
    assert_eq!(store.events_after(0, 100).await.expect("read"), logged);
    assert_eq!(store.events_after(logged[1].seq, 100).await.expect("read"), logged[2..]);
    assert_eq!(store.events_after(0, 3).await.expect("read"), logged[..3]);
    assert!(store.events_after(logged[3].seq, 100).await.expect("read").is_empty());

    // Event ids are unique in the log: a reused id fails the call, which then writes nothing.
    let r = store
        .append_events(&[event("e5", &a, EventType::PUSH_FAILED, None), event("e1", &a, EventType::PUSH_FAILED, None)])
        .await;
    assert!(r.is_err(), "a reused event id must be refused");
    assert_eq!(store.events_after(0, 100).await.expect("read"), logged);
}

pub async fn events_are_atomic_with_state(store: &dyn Store) {
    let d = id("apple:ATOMIC");
    let mut e = Enrollment::new(d.clone(), 1);
    store.save_enrollment(&e, &[event("ev-auth", &d, EventType::DEVICE_AUTHENTICATED, None)]).await.expect("save");
    let logged = store.events_after(0, 10).await.expect("read");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].device_id, "apple:ATOMIC");

    // When the events cannot be written, the state change is not written either.
    e.state = EnrollmentState::Enrolled;
    let dup = event("ev-auth", &d, EventType::DEVICE_ENROLLED, None);
    assert!(store.save_enrollment(&e, std::slice::from_ref(&dup)).await.is_err());
    assert_eq!(store.enrollment(&d).await.expect("read").expect("present").state, EnrollmentState::Authenticated);

    let other = id("apple:ATOMIC-NEW");
    assert!(store.save_enrollment(&Enrollment::new(other.clone(), 1), std::slice::from_ref(&dup)).await.is_err());
    assert_eq!(store.enrollment(&other).await.expect("read"), None);

    assert!(store.enqueue(&[new_command(&d, "c", 0)], std::slice::from_ref(&dup)).await.is_err());
    assert!(store.command("c").await.expect("read").is_empty());

    store.enqueue(&[new_command(&d, "c", 0)], &[]).await.expect("enqueue");
    let q = [CommandStatus::Queued];
    assert!(
        store.update_command(update(&d, "c", &q, CommandStatus::Sent, 5), std::slice::from_ref(&dup)).await.is_err()
    );
    let r = store.command_for_device(&d, "c").await.expect("read").expect("present");
    assert_eq!((r.status, r.sent_count), (CommandStatus::Queued, 0));

    assert!(
        store.set_state_with_children(&d, EnrollmentState::Unenrolled, 9, std::slice::from_ref(&dup)).await.is_err()
    );
    assert_eq!(store.enrollment(&d).await.expect("read").expect("present").state, EnrollmentState::Authenticated);

    assert_eq!(store.events_after(0, 10).await.expect("read"), logged);
}

pub async fn sink_cursors(store: &dyn Store) {
    assert_eq!(store.sink_cursor("nats").await.expect("read"), 0);
    store.set_sink_cursor("nats", 41).await.expect("set");
    store.set_sink_cursor("webhook", 7).await.expect("set");
    assert_eq!(store.sink_cursor("nats").await.expect("read"), 41);
    store.set_sink_cursor("nats", 42).await.expect("set");
    assert_eq!(store.sink_cursor("nats").await.expect("read"), 42);
    assert_eq!(store.sink_cursor("webhook").await.expect("read"), 7);
    assert_eq!(store.sink_cursor("other").await.expect("read"), 0);
    // Cursors are not events.
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
}

pub async fn push_certs_upsert_by_topic(store: &dyn Store) {
    assert!(store.push_certs().await.expect("read").is_empty());
    let mut a = PushCert {
        topic: "com.apple.mgmt.B".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nB1\n-----END CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nK1\n-----END PRIVATE KEY-----\n".into(),
        not_after: 2_000_000_000,
        updated_at: 10,
    };
    let b = PushCert { topic: "com.apple.mgmt.A".into(), not_after: 1_900_000_000, updated_at: 11, ..a.clone() };
    store.save_push_cert(&a).await.expect("save");
    store.save_push_cert(&b).await.expect("save");
    a.cert_pem = "renewed".into();
    a.key_pem = "new key".into();
    a.not_after = 2_100_000_000;
    a.updated_at = 20;
    store.save_push_cert(&a).await.expect("replace");
    let mut got = store.push_certs().await.expect("read");
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(got, [b, a]);
}

// ---- SCEP -----------------------------------------------------------------------------------

fn challenge(hash: &str, ticket: Option<&str>, created_at: i64, expires_at: i64) -> NewScepChallenge {
    NewScepChallenge { challenge_sha256: hash.into(), ticket: ticket.map(str::to_owned), created_at, expires_at }
}

fn scep_cert(fp: &str, challenge: Option<&str>, ticket: Option<&str>, issued_at: i64) -> ScepCertificate {
    ScepCertificate {
        cert_sha256: fp.into(),
        serial: "0a1b2c".into(),
        subject: "CN=device ünï,O=Example".into(),
        not_before: issued_at - 300,
        not_after: issued_at + 86_400,
        message_type: "PKCSReq".into(),
        transaction_id: format!("tx-{fp}"),
        challenge_sha256: challenge.map(str::to_owned),
        ticket: ticket.map(str::to_owned),
        renewal_of: None,
        issued_at,
    }
}

pub async fn scep_challenge_round_trip(store: &dyn Store) {
    assert_eq!(store.scep_challenge("h1").await.expect("read"), None);
    store.create_scep_challenge(&challenge("h1", Some("ticket-1"), 10, 3610)).await.expect("create");
    store.create_scep_challenge(&challenge("h2", None, 11, 3611)).await.expect("create");
    assert_eq!(
        store.scep_challenge("h1").await.expect("read"),
        Some(ScepChallenge {
            challenge_sha256: "h1".into(),
            ticket: Some("ticket-1".into()),
            created_at: 10,
            expires_at: 3610,
            used_at: None,
            issued_cert_sha256: None,
        })
    );
    // The same hash twice is refused and changes nothing.
    assert!(store.create_scep_challenge(&challenge("h1", None, 99, 99)).await.is_err());
    assert_eq!(store.scep_challenge("h1").await.expect("read").expect("present").created_at, 10);
    let all = store.scep_challenges(10).await.expect("list");
    assert_eq!(all.iter().map(|c| c.challenge_sha256.as_str()).collect::<Vec<_>>(), ["h1", "h2"]);
    assert_eq!(store.scep_challenges(1).await.expect("list").len(), 1);
    // SCEP state is not events.
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
}

pub async fn scep_certificate_consumes_its_challenge_once(store: &dyn Store) {
    store.create_scep_challenge(&challenge("h1", Some("t"), 10, 1000)).await.expect("create");
    let a = scep_cert("fp-a", Some("h1"), Some("t"), 500);
    assert_eq!(store.record_scep_certificate(&a, Some("h1"), 500).await.expect("record"), ScepRecord::Recorded);
    assert_eq!(store.scep_certificate("fp-a").await.expect("read"), Some(a.clone()));
    let used = store.scep_challenge("h1").await.expect("read").expect("present");
    assert_eq!((used.used_at, used.issued_cert_sha256.as_deref()), (Some(500), Some("fp-a")));
    // Second use: refused, and the second certificate is not stored.
    let b = scep_cert("fp-b", Some("h1"), Some("t"), 501);
    assert_eq!(
        store.record_scep_certificate(&b, Some("h1"), 501).await.expect("record"),
        ScepRecord::ChallengeUnavailable
    );
    assert_eq!(store.scep_certificate("fp-b").await.expect("read"), None);
    assert_eq!(store.scep_challenge("h1").await.expect("read").expect("present"), used);
    assert_eq!(store.scep_certificates(10).await.expect("list"), [a]);
}

pub async fn scep_unavailable_challenge_stores_nothing(store: &dyn Store) {
    store.create_scep_challenge(&challenge("h1", None, 10, 1000)).await.expect("create");
    let c = scep_cert("fp", Some("h1"), None, 1000);
    // Expired: `expires_at` is exclusive.
    assert_eq!(store.record_scep_certificate(&c, Some("h1"), 1000).await.expect("r"), ScepRecord::ChallengeUnavailable);
    // Unknown.
    assert_eq!(store.record_scep_certificate(&c, Some("nope"), 10).await.expect("r"), ScepRecord::ChallengeUnavailable);
    assert!(store.scep_certificates(10).await.expect("list").is_empty());
    assert_eq!(store.scep_challenge("h1").await.expect("read").expect("present").used_at, None);
    // A certificate fingerprint is recorded once: a duplicate fails and consumes nothing.
    store.create_scep_challenge(&challenge("h2", None, 10, 5000)).await.expect("create");
    store.record_scep_certificate(&scep_cert("dup", None, None, 20), None, 20).await.expect("record");
    assert!(store.record_scep_certificate(&scep_cert("dup", Some("h2"), None, 21), Some("h2"), 21).await.is_err());
    assert_eq!(store.scep_challenge("h2").await.expect("read").expect("present").used_at, None);
}

pub async fn scep_ticket_status(store: &dyn Store) {
    assert_eq!(store.scep_ticket_status("t").await.expect("read"), None);
    store.create_scep_challenge(&challenge("h1", Some("t"), 10, 1000)).await.expect("create");
    store.create_scep_challenge(&challenge("h2", Some("t"), 11, 1000)).await.expect("create");
    store.create_scep_challenge(&challenge("h3", Some("other"), 12, 1000)).await.expect("create");
    let unused = TicketStatus { challenge_used: false, issued_cert_sha256: None };
    assert_eq!(store.scep_ticket_status("t").await.expect("read"), Some(unused.clone()));
    store.record_scep_certificate(&scep_cert("fp-2", Some("h2"), Some("t"), 20), Some("h2"), 20).await.expect("r");
    let used = TicketStatus { challenge_used: true, issued_cert_sha256: Some("fp-2".into()) };
    assert_eq!(store.scep_ticket_status("t").await.expect("read"), Some(used));
    store.record_scep_certificate(&scep_cert("fp-1", Some("h1"), Some("t"), 30), Some("h1"), 30).await.expect("r");
    // The most recent use wins.
    let latest = TicketStatus { challenge_used: true, issued_cert_sha256: Some("fp-1".into()) };
    assert_eq!(store.scep_ticket_status("t").await.expect("read"), Some(latest));
    assert_eq!(store.scep_ticket_status("other").await.expect("read"), Some(unused));
}

pub async fn scep_renewal_without_challenge(store: &dyn Store) {
    let mut renewed = scep_cert("fp-new", None, None, 40);
    renewed.message_type = "RenewalReq".into();
    renewed.renewal_of = Some("fp-old".into());
    assert_eq!(store.record_scep_certificate(&renewed, None, 40).await.expect("record"), ScepRecord::Recorded);
    assert_eq!(store.scep_certificate("fp-new").await.expect("read").and_then(|c| c.renewal_of), Some("fp-old".into()));
    assert_eq!(store.scep_certificate("fp-old").await.expect("read"), None);
}

pub async fn scep_renewals_are_found_by_what_they_renew(store: &dyn Store) {
    let renewal = |fp: &str, of: &str, at: i64| {
        let mut c = scep_cert(fp, None, None, at);
        c.message_type = "RenewalReq".into();
        c.renewal_of = Some(of.into());
        c
    };
    store.record_scep_certificate(&scep_cert("fp-a", None, None, 10), None, 10).await.expect("record");
    assert_eq!(store.scep_renewal_of("fp-a").await.expect("read"), None);
    store.record_scep_certificate(&renewal("fp-b", "fp-a", 20), None, 20).await.expect("record");
    store.record_scep_certificate(&renewal("fp-c", "fp-b", 30), None, 30).await.expect("record");
    let of_a = store.scep_renewal_of("fp-a").await.expect("read").expect("renewed");
    assert_eq!(of_a.cert_sha256, "fp-b");
    assert_eq!(store.scep_renewal_of("fp-b").await.expect("read").map(|c| c.cert_sha256), Some("fp-c".into()));
    assert_eq!(store.scep_renewal_of("fp-c").await.expect("read"), None);
    // Renewed twice from the same certificate: the newest renewal.
    store.record_scep_certificate(&renewal("fp-b2", "fp-a", 40), None, 40).await.expect("record");
    assert_eq!(store.scep_renewal_of("fp-a").await.expect("read").map(|c| c.cert_sha256), Some("fp-b2".into()));
}

pub async fn enroll_tickets_lifecycle(store: &dyn Store) {
    let ticket = |id: &str, created_at: i64| EnrollTicket {
        id: id.to_owned(),
        created_at,
        expires_at: created_at + 100,
        profile_downloaded_at: None,
        downloads: 0,
        variant: None,
    };
    assert_eq!(store.enroll_ticket("a").await.expect("read"), None);
    let a = ticket("a", 1000);
    store.create_enroll_ticket(&a, 0).await.expect("create");
    assert_eq!(store.enroll_ticket("a").await.expect("read"), Some(a.clone()));
    assert!(store.create_enroll_ticket(&a, 0).await.is_err(), "an id is created once");

    assert!(!store.record_profile_download("nope", "device", 1010).await.expect("unknown"));
    assert!(store.record_profile_download("a", "device", 1010).await.expect("first"));
    assert!(store.record_profile_download("a", "user", 1020).await.expect("second"));
    let got = store.enroll_ticket("a").await.expect("read").expect("there");
    assert_eq!(got.profile_downloaded_at, Some(1010), "the first download is kept");
    assert_eq!(got.downloads, 2);
    assert_eq!(got.variant.as_deref(), Some("user"), "the last variant");
    assert!(!store.record_profile_download("a", "device", 1100).await.expect("expired"), "not at expires_at");
    assert_eq!(store.enroll_ticket("a").await.expect("read"), Some(got.clone()), "an expired ticket is not counted");

    // A new ticket purges those that expired before the given time, and only those.
    store.create_enroll_ticket(&ticket("b", 1050), 0).await.expect("b");
    store.create_enroll_ticket(&ticket("c", 2000), 1101).await.expect("c purges a");
    assert_eq!(store.enroll_ticket("a").await.expect("read"), None);
    assert!(store.enroll_ticket("b").await.expect("read").is_some(), "b expires at 1150, kept");
    assert!(store.enroll_ticket("c").await.expect("read").is_some());
}

pub async fn omadm_session_compare_and_set(store: &dyn Store) {
    let d = id("windows:OMADM-1");
    let session = |version: i64, msg: i64| OmaDmSession {
        device_id: d.clone(),
        session_id: "1A".into(),
        client_msg_id: msg,
        version,
        state: format!("{{\"msg\":{msg}}}"),
        request_sha256: format!("sha-{msg}"),
        reply: vec![msg as u8; 3],
        updated_at: 100 + msg,
    };
    assert_eq!(store.omadm_session(&d).await.expect("read"), None);
    let e1 = event("e-omadm-1", &d, EventType::DEVICE_CHECKED_IN, None);
    assert!(store.save_omadm_session(&session(1, 1), None, &[e1]).await.expect("insert"));
    assert_eq!(store.omadm_session(&d).await.expect("read"), Some(session(1, 1)));
    let seq = store.last_event_seq().await.expect("seq");
    // A second insert, or an update from a stale version, applies nothing, events included.
    let e2 = event("e-omadm-2", &d, EventType::DEVICE_CHECKED_IN, None);
    assert!(!store.save_omadm_session(&session(1, 9), None, std::slice::from_ref(&e2)).await.expect("insert again"));
    assert!(!store.save_omadm_session(&session(3, 9), Some(2), std::slice::from_ref(&e2)).await.expect("stale"));
    assert_eq!(store.omadm_session(&d).await.expect("read"), Some(session(1, 1)));
    assert_eq!(store.last_event_seq().await.expect("seq"), seq);
    assert!(store.save_omadm_session(&session(2, 2), Some(1), &[e2]).await.expect("update"));
    assert_eq!(store.omadm_session(&d).await.expect("read"), Some(session(2, 2)));
    assert_eq!(store.last_event_seq().await.expect("seq"), seq + 1);
    assert_eq!(store.omadm_sessions(10).await.expect("list"), vec![session(2, 2)]);
    assert_eq!(store.omadm_session(&id("windows:OTHER")).await.expect("read"), None);
}

/// `notifier` must be signalled after a commit that appended events (and may be after others).
pub async fn notifier_fires_after_append(store: &dyn Store, notifier: &Notify) {
    let d = id("apple:NOTIFY");
    let wait = Duration::from_secs(5);

    let notified = notifier.notified();
    tokio::pin!(notified);
    // Registered before the write, as a long poll must, so the wake-up cannot be missed.
    notified.as_mut().enable();
    store.append_events(&[event("n1", &d, EventType::DEVICE_CHECKED_IN, None)]).await.expect("append");
    tokio::time::timeout(wait, notified).await.expect("notified after append_events");

    for step in 0..4 {
        let notified = notifier.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ev = [event(&format!("n-step-{step}"), &d, EventType::DEVICE_CHECKED_IN, None)];
        match step {
            0 => store.save_enrollment(&Enrollment::new(d.clone(), 1), &ev).await.expect("save"),
            1 => store.enqueue(&[new_command(&d, "c", 0)], &ev).await.expect("enqueue"),
            2 => {
                let applied = store
                    .update_command(update(&d, "c", &[CommandStatus::Queued], CommandStatus::Sent, 2), &ev)
                    .await
                    .expect("update");
                assert!(applied);
            }
            _ => {
                store.set_state_with_children(&d, EnrollmentState::Unenrolled, 3, &ev).await.expect("set state");
            }
        }
        tokio::time::timeout(wait, notified).await.unwrap_or_else(|_| panic!("notified after step {step}"));
    }
}

// ---- declarations and tokens ----------------------------------------------------------------

pub fn declaration(device: &DeviceId, identifier: &str, server_token: &str, now: i64) -> StoredDeclaration {
    StoredDeclaration {
        device_id: device.clone(),
        identifier: identifier.to_owned(),
        declaration_type: "com.apple.configuration.passcode.settings".to_owned(),
        server_token: server_token.to_owned(),
        body: json!({ "Identifier": identifier, "ServerToken": server_token, "Payload": { "n": now } }).to_string(),
        created_at: now,
        updated_at: now,
    }
}

fn change<'a>(token: &'a str, now: i64, commands: &'a [NewCommand], events: &'a [Event]) -> DeclarationsChange<'a> {
    DeclarationsChange { token, now, commands, events }
}

pub async fn declarations_put_replace_delete(store: &dyn Store) {
    let d = id("apple:DDM-1");
    let empty = store.declaration_set(&d).await.expect("read");
    assert_eq!((empty.token, empty.declarations.len()), (None, 0), "a channel without declarations has no token");

    let b = declaration(&d, "b", "1", 10);
    let ev = [event("ev-b", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    let sync = [new_command(&d, "sync-1", 0)];
    assert!(store.put_declaration(&b, change("t1", 10, &sync, &ev)).await.expect("put"));
    let a = declaration(&d, "a", "1", 11);
    assert!(store.put_declaration(&a, change("t2", 11, &[], &[])).await.expect("put"));

    let set = store.declaration_set(&d).await.expect("read");
    assert_eq!(set.token, Some(DeclarationsToken { token: "t2".into(), updated_at: 11 }));
    assert_eq!(set.declarations, [a.clone(), b.clone()], "ordered by identifier");
    assert_eq!(store.declaration(&d, "b").await.expect("read"), Some(b.clone()));
    assert_eq!(store.declaration(&d, "zzz").await.expect("read"), None);
    // The sync command and the event were written with the change.
    assert_eq!(pending_ids(store, &d).await, ["sync-1"]);
    assert_eq!(event_ids(store).await, ["ev-b"]);

    // The same declaration again changes nothing: no token, no command, no event.
    let again = [new_command(&d, "sync-2", 0)];
    let ev2 = [event("ev-again", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    let same = StoredDeclaration { updated_at: 99, ..b.clone() };
    assert!(!store.put_declaration(&same, change("t3", 99, &again, &ev2)).await.expect("put same"));
    assert_eq!(store.declaration_set(&d).await.expect("read").token.expect("token").token, "t2");
    assert_eq!(pending_ids(store, &d).await, ["sync-1"]);
    assert_eq!(event_ids(store).await, ["ev-b"]);

    // A new revision replaces the row but keeps its creation time.
    let mut b2 = declaration(&d, "b", "2", 20);
    b2.declaration_type = "com.apple.configuration.screensharing.connection".into();
    assert!(store.put_declaration(&b2, change("t4", 20, &[], &[])).await.expect("replace"));
    let got = store.declaration(&d, "b").await.expect("read").expect("present");
    assert_eq!(got, StoredDeclaration { created_at: 10, ..b2.clone() });

    // Deleting: the token changes with it; deleting what is not there writes nothing.
    let ev3 = [event("ev-del", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    assert!(store.delete_declaration(&d, "a", change("t5", 30, &[], &ev3)).await.expect("delete"));
    let ev4 = [event("ev-del-again", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    assert!(!store.delete_declaration(&d, "a", change("t6", 31, &[], &ev4)).await.expect("delete again"));
    let set = store.declaration_set(&d).await.expect("read");
    assert_eq!(set.token, Some(DeclarationsToken { token: "t5".into(), updated_at: 30 }));
    assert_eq!(set.declarations.iter().map(|x| x.identifier.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(event_ids(store).await, ["ev-b", "ev-del"]);

    // Removing the last declaration leaves an empty set with its own token (not "never had any").
    assert!(store.delete_declaration(&d, "b", change("t7", 40, &[], &[])).await.expect("delete"));
    let set = store.declaration_set(&d).await.expect("read");
    assert_eq!((set.token.map(|t| t.token), set.declarations.len()), (Some("t7".into()), 0));
}

pub async fn declaration_changes_are_atomic(store: &dyn Store) {
    let d = id("apple:DDM-ATOMIC");
    let first = declaration(&d, "x", "1", 1);
    let ev = [event("ev-1", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    assert!(store.put_declaration(&first, change("t1", 1, &[new_command(&d, "c1", 0)], &ev)).await.expect("put"));
    let before = store.declaration_set(&d).await.expect("read");

    // A reused event id, or a command id already queued, fails the whole change.
    let dup_event = [event("ev-1", &d, EventType::DEVICE_DECLARATIONS_CHANGED, None)];
    let second = declaration(&d, "x", "2", 2);
    assert!(store.put_declaration(&second, change("t2", 2, &[], &dup_event)).await.is_err());
    let dup_command = [new_command(&d, "c1", 0)];
    assert!(store.put_declaration(&second, change("t2", 2, &dup_command, &[])).await.is_err());
    assert!(store.delete_declaration(&d, "x", change("t3", 3, &dup_command, &[])).await.is_err());
    assert!(store.delete_declaration(&d, "x", change("t3", 3, &[], &dup_event)).await.is_err());

    assert_eq!(store.declaration_set(&d).await.expect("read"), before);
    assert_eq!(pending_ids(store, &d).await, ["c1"]);
    assert_eq!(event_ids(store).await, ["ev-1"]);
}

pub async fn declarations_are_per_channel(store: &dyn Store) {
    let device = id("apple:DDM-CH");
    let user = id("apple:DDM-CH:501");
    assert!(store.put_declaration(&declaration(&device, "x", "1", 1), change("td", 1, &[], &[])).await.expect("put"));
    assert!(store.put_declaration(&declaration(&user, "x", "9", 2), change("tu", 2, &[], &[])).await.expect("put"));
    let d = store.declaration_set(&device).await.expect("read");
    let u = store.declaration_set(&user).await.expect("read");
    assert_eq!((d.token.expect("token").token, d.declarations[0].server_token.as_str()), ("td".into(), "1"));
    assert_eq!((u.token.expect("token").token, u.declarations[0].server_token.as_str()), ("tu".into(), "9"));
    assert!(store.delete_declaration(&user, "x", change("tu2", 3, &[], &[])).await.expect("delete"));
    assert_eq!(store.declaration_set(&device).await.expect("read").declarations.len(), 1);
}

pub async fn bootstrap_token_set_and_clear(store: &dyn Store) {
    let d = id("apple:BOOT-1");
    let ev = [event("ev-set", &d, EventType::DEVICE_BOOTSTRAP_TOKEN_SET, None)];
    // No enrollment: nothing written, not even the event.
    assert!(!store.set_bootstrap_token(&d, Some(b"sealed"), 5, &ev).await.expect("set"));
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);

    let mut e = Enrollment::new(d.clone(), 1);
    e.state = EnrollmentState::Enrolled;
    store.save_enrollment(&e, &[]).await.expect("save");
    assert!(store.set_bootstrap_token(&d, Some(b"sealed-1"), 5, &ev).await.expect("set"));
    let got = store.enrollment(&d).await.expect("read").expect("present");
    assert_eq!((got.bootstrap_token.as_deref(), got.updated_at), (Some(&b"sealed-1"[..]), 5));
    assert_eq!(event_ids(store).await, ["ev-set"]);

    // Saving a copy read before the escrow does not undo it.
    store.save_enrollment(&e, &[]).await.expect("stale save");
    assert_eq!(
        store.enrollment(&d).await.expect("read").expect("present").bootstrap_token.as_deref(),
        Some(&b"sealed-1"[..])
    );

    // Atomic with its events.
    let dup = [event("ev-set", &d, EventType::DEVICE_BOOTSTRAP_TOKEN_SET, None)];
    assert!(store.set_bootstrap_token(&d, Some(b"sealed-2"), 6, &dup).await.is_err());
    assert_eq!(
        store.enrollment(&d).await.expect("read").expect("present").bootstrap_token.as_deref(),
        Some(&b"sealed-1"[..])
    );

    let ev2 = [event("ev-clear", &d, EventType::DEVICE_BOOTSTRAP_TOKEN_SET, None)];
    assert!(store.set_bootstrap_token(&d, None, 7, &ev2).await.expect("clear"));
    assert_eq!(store.enrollment(&d).await.expect("read").expect("present").bootstrap_token, None);
    assert_eq!(event_ids(store).await, ["ev-set", "ev-clear"]);
    assert!(store.plaintext_bootstrap_tokens(10).await.expect("read").is_empty());
}

// --- Windows enrollment ---

fn windows_cert(
    fp: &str,
    device: &DeviceId,
    upn: Option<&str>,
    renewal_of: Option<&str>,
    issued_at: i64,
) -> WindowsCertificate {
    WindowsCertificate {
        cert_sha256: fp.to_owned(),
        device_id: device.clone(),
        serial: format!("{issued_at:x}"),
        thumbprint: fp.to_ascii_uppercase(),
        not_before: issued_at - 300,
        not_after: issued_at + 86_400,
        kind: if renewal_of.is_some() { "renew" } else { "enroll" }.to_owned(),
        upn: upn.map(str::to_owned),
        auth_policy: "OnPremise".to_owned(),
        renewal_of: renewal_of.map(str::to_owned),
        issued_at,
    }
}

fn windows_enrollment(device: &DeviceId, fp: &str, now: i64) -> Enrollment {
    let mut e = Enrollment::new(device.clone(), now);
    e.state = EnrollmentState::Enrolled;
    e.cert_sha256 = Some(fp.to_owned());
    e.enrolled_at = Some(now);
    e.attributes.insert("upn".into(), json!("u@example.com"));
    e
}

pub async fn windows_enrollment_binds_its_certificate(store: &dyn Store) {
    let d = id("windows:0A1B2C3D");
    let cert = windows_cert("fp-1", &d, Some("u@example.com"), None, 10);
    let ev = [event("ev-enrolled", &d, EventType::DEVICE_ENROLLED, None)];
    let r = store.record_windows_enrollment(&cert, &windows_enrollment(&d, "fp-1", 10), None, &ev).await;
    assert_eq!(r.expect("record"), WindowsRecord::Recorded);
    assert_eq!(store.windows_certificate("fp-1").await.expect("read"), Some(cert.clone()));
    assert_eq!(store.windows_certificates(10).await.expect("list"), [cert]);
    let e = store.enrollment(&d).await.expect("read").expect("present");
    assert_eq!(
        (e.state, e.cert_sha256.as_deref(), e.platform()),
        (EnrollmentState::Enrolled, Some("fp-1"), Platform::Windows)
    );
    assert_eq!(store.enrollment_by_cert("fp-1").await.expect("by cert"), Some(d.clone()));
    assert_eq!(event_ids(store).await, ["ev-enrolled"]);

    // Enrolling again (a reset device) rebinds without a precondition.
    let again = windows_cert("fp-2", &d, Some("u@example.com"), None, 20);
    let r = store.record_windows_enrollment(&again, &windows_enrollment(&d, "fp-2", 20), None, &[]).await;
    assert_eq!(r.expect("record"), WindowsRecord::Recorded);
    assert_eq!(store.enrollment_by_cert("fp-1").await.expect("by cert"), None);
    assert_eq!(store.windows_certificates(10).await.expect("list").len(), 2);
}

pub async fn windows_renewal_is_compare_and_set(store: &dyn Store) {
    let d = id("windows:RENEW-1");
    let first = windows_cert("fp-a", &d, Some("u@example.com"), None, 10);
    store.record_windows_enrollment(&first, &windows_enrollment(&d, "fp-a", 10), None, &[]).await.expect("enroll");

    let renewed = windows_cert("fp-b", &d, Some("u@example.com"), Some("fp-a"), 20);
    let ev = [event("ev-renewed", &d, EventType::DEVICE_IDENTITY_RENEWED, None)];
    let r = store.record_windows_enrollment(&renewed, &windows_enrollment(&d, "fp-b", 20), Some("fp-a"), &ev).await;
    assert_eq!(r.expect("renew"), WindowsRecord::Recorded);
    assert_eq!(store.enrollment(&d).await.expect("read").expect("present").cert_sha256.as_deref(), Some("fp-b"));

    // A second renewal of the same (now replaced) certificate writes nothing.
    let stale = windows_cert("fp-c", &d, Some("u@example.com"), Some("fp-a"), 30);
    let ev2 = [event("ev-stale", &d, EventType::DEVICE_IDENTITY_RENEWED, None)];
    let r = store.record_windows_enrollment(&stale, &windows_enrollment(&d, "fp-c", 30), Some("fp-a"), &ev2).await;
    assert_eq!(r.expect("stale"), WindowsRecord::BindingChanged);
    assert_eq!(store.windows_certificate("fp-c").await.expect("read"), None);
    assert_eq!(store.enrollment(&d).await.expect("read").expect("present").cert_sha256.as_deref(), Some("fp-b"));
    assert_eq!(event_ids(store).await, ["ev-renewed"]);

    // Unenrolled: no renewal either; unknown device: none.
    store.set_state_with_children(&d, EnrollmentState::Unenrolled, 40, &[]).await.expect("unenroll");
    let r = store.record_windows_enrollment(&stale, &windows_enrollment(&d, "fp-c", 40), Some("fp-b"), &[]).await;
    assert_eq!(r.expect("unenrolled"), WindowsRecord::BindingChanged);
    let other = id("windows:NEVER");
    let r = store
        .record_windows_enrollment(
            &windows_cert("fp-d", &other, None, Some("x"), 50),
            &windows_enrollment(&other, "fp-d", 50),
            Some("x"),
            &[],
        )
        .await;
    assert_eq!(r.expect("unknown"), WindowsRecord::BindingChanged);
    assert_eq!(store.enrollment(&other).await.expect("read"), None);
}

pub async fn windows_record_is_atomic(store: &dyn Store) {
    let d = id("windows:ATOMIC");
    let cert = windows_cert("fp-x", &d, None, None, 10);
    store.record_windows_enrollment(&cert, &windows_enrollment(&d, "fp-x", 10), None, &[]).await.expect("first");
    let before = store.enrollment(&d).await.expect("read");
    // The same certificate twice: the whole call fails, the enrollment and log are untouched.
    let ev = [event("ev-dup", &d, EventType::DEVICE_ENROLLED, None)];
    let mut changed = windows_enrollment(&d, "fp-x", 99);
    changed.attributes.insert("upn".into(), json!("other@example.com"));
    assert!(store.record_windows_enrollment(&cert, &changed, None, &ev).await.is_err());
    assert_eq!(store.enrollment(&d).await.expect("read"), before);
    assert_eq!(store.last_event_seq().await.expect("seq"), 0);
    // A duplicate event id also fails the whole call, certificate included.
    store.append_events(&[event("ev-taken", &d, EventType::DEVICE_ENROLLED, None)]).await.expect("append");
    let fresh = windows_cert("fp-y", &d, None, None, 20);
    let dup = [event("ev-taken", &d, EventType::DEVICE_ENROLLED, None)];
    assert!(store.record_windows_enrollment(&fresh, &windows_enrollment(&d, "fp-y", 20), None, &dup).await.is_err());
    assert_eq!(store.windows_certificate("fp-y").await.expect("read"), None);
    assert_eq!(store.enrollment(&d).await.expect("read"), before);
}

pub async fn windows_devices_of_user(store: &dyn Store) {
    let (a1, a2, b1) = (id("windows:A1"), id("windows:A2"), id("windows:B1"));
    for (d, fp, upn) in [(&a1, "f1", "a@x"), (&a2, "f2", "a@x"), (&b1, "f3", "b@x")] {
        let c = windows_cert(fp, d, Some(upn), None, 10);
        store.record_windows_enrollment(&c, &windows_enrollment(d, fp, 10), None, &[]).await.expect("enroll");
    }
    assert_eq!(store.windows_devices_of_user("a@x").await.expect("a"), [a1.clone(), a2.clone()]);
    assert_eq!(store.windows_devices_of_user("b@x").await.expect("b"), std::slice::from_ref(&b1));
    assert!(store.windows_devices_of_user("c@x").await.expect("c").is_empty());
    // Unenrolled devices do not count.
    store.set_state_with_children(&a2, EnrollmentState::Unenrolled, 20, &[]).await.expect("unenroll");
    assert_eq!(store.windows_devices_of_user("a@x").await.expect("a"), std::slice::from_ref(&a1));
    // A device re-enrolled by another user counts for that user only.
    let c = windows_cert("f4", &a1, Some("b@x"), None, 30);
    store.record_windows_enrollment(&c, &windows_enrollment(&a1, "f4", 30), None, &[]).await.expect("re-enroll");
    assert!(store.windows_devices_of_user("a@x").await.expect("a").is_empty());
    assert_eq!(store.windows_devices_of_user("b@x").await.expect("b"), [a1, b1]);
}

// ---- Android: Pub/Sub deliveries and AMAPI operations ------------------------------------------

fn delivery<'a>(
    message_id: &'a str,
    ordering: Option<(&'a DeviceId, i64)>,
    enrollment: Option<&'a Enrollment>,
    events: &'a [Event],
) -> PubSubDelivery<'a> {
    let enrollment = enrollment.map(EnrollmentWrite::Full);
    PubSubDelivery { message_id, received_at: 1_000, ordering, enrollment, command_updates: &[], events }
}

fn android_enrollment(device: &DeviceId, state: EnrollmentState, at: i64) -> Enrollment {
    let mut e = Enrollment::new(device.clone(), at);
    e.state = state;
    e.updated_at = at;
    e
}

pub async fn pubsub_dedupe_and_device_order(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    let enrolled = android_enrollment(&d, EnrollmentState::Enrolled, 10);
    let ev = [event("ev-1", &d, EventType::DEVICE_ENROLLED, None)];
    let outcome = store.apply_pubsub(delivery("m1", Some((&d, 5_000)), Some(&enrolled), &ev)).await.expect("apply");
    assert_eq!(outcome, PubSubOutcome::Applied);
    assert_eq!(store.enrollment(&d).await.expect("read"), Some(enrolled.clone()));

    // The same message again: nothing new, whatever it carries.
    let gone = android_enrollment(&d, EnrollmentState::Unenrolled, 11);
    let ev2 = [event("ev-dup", &d, EventType::DEVICE_UNENROLLED, None)];
    let outcome = store.apply_pubsub(delivery("m1", Some((&d, 9_000)), Some(&gone), &ev2)).await.expect("apply");
    assert_eq!(outcome, PubSubOutcome::Duplicate);

    // An older message (a stale DELETED) arriving later: its id is recorded, nothing applied.
    let ev3 = [event("ev-stale", &d, EventType::DEVICE_UNENROLLED, None)];
    let outcome = store.apply_pubsub(delivery("m0", Some((&d, 4_999)), Some(&gone), &ev3)).await.expect("apply");
    assert_eq!(outcome, PubSubOutcome::Stale);
    assert_eq!(store.enrollment(&d).await.expect("read"), Some(enrolled.clone()));
    let outcome = store.apply_pubsub(delivery("m0", Some((&d, 9_999)), Some(&gone), &ev3)).await.expect("apply");
    assert_eq!(outcome, PubSubOutcome::Duplicate, "a stale message is still remembered");

    // The same publish time is not older: applied. Another device has its own order.
    let ev4 = [event("ev-4", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert_eq!(
        store.apply_pubsub(delivery("m2", Some((&d, 5_000)), None, &ev4)).await.expect("apply"),
        PubSubOutcome::Applied
    );
    let other = id("android:LC01:dev2");
    let ev5 = [event("ev-5", &other, EventType::DEVICE_STATUS_REPORT, None)];
    assert_eq!(
        store.apply_pubsub(delivery("m3", Some((&other, 1)), None, &ev5)).await.expect("apply"),
        PubSubOutcome::Applied
    );
    // A newer DELETED applies; then the older enrollment report is stale.
    let ev6 = [event("ev-6", &d, EventType::DEVICE_UNENROLLED, None)];
    assert_eq!(
        store.apply_pubsub(delivery("m4", Some((&d, 6_000)), Some(&gone), &ev6)).await.expect("apply"),
        PubSubOutcome::Applied
    );
    assert_eq!(
        store.apply_pubsub(delivery("m5", Some((&d, 5_500)), Some(&enrolled), &[])).await.expect("apply"),
        PubSubOutcome::Stale
    );
    assert_eq!(store.enrollment(&d).await.expect("read").map(|e| e.state), Some(EnrollmentState::Unenrolled));
    // Messages without ordering (enterprise-level) are only deduplicated.
    let ev7 = [event("ev-7", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert_eq!(store.apply_pubsub(delivery("m6", None, None, &ev7)).await.expect("apply"), PubSubOutcome::Applied);
    assert_eq!(store.apply_pubsub(delivery("m6", None, None, &ev7)).await.expect("apply"), PubSubOutcome::Duplicate);

    assert_eq!(event_ids(store).await, ["ev-1", "ev-4", "ev-5", "ev-6", "ev-7"]);
}

/// The ids of every logged event, in log order.
async fn logged_ids(store: &dyn Store) -> Vec<String> {
    let logged = store.events_after(0, 100).await.expect("events");
    logged
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.json).expect("json")["id"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

pub async fn pubsub_applies_command_updates(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    store.enqueue(&[new_command(&d, "c1", 0), new_command(&d, "c2", 0)], &[]).await.expect("enqueue");
    let sent = [CommandStatus::Sent];
    let mut ack = update(&d, "c1", &sent, CommandStatus::Acknowledged, 50);
    ack.result = Some(json!({ "done": true }));
    // c1 is still queued: the compare-and-set does not apply, the message still does.
    let updates = [ack.clone()];
    let ev = [event("ev-a", &d, EventType::COMMAND_ACKNOWLEDGED, Some("c1"))];
    let d1 = PubSubDelivery { command_updates: &updates, ..delivery("m1", Some((&d, 1)), None, &ev) };
    assert_eq!(store.apply_pubsub(d1).await.expect("apply"), PubSubOutcome::Applied);
    assert_eq!(store.command_for_device(&d, "c1").await.expect("read").expect("c1").status, CommandStatus::Queued);
    assert!(logged_ids(store).await.is_empty(), "no event for a change that did not happen");

    let queued = [CommandStatus::Queued];
    assert!(store.update_command(update(&d, "c1", &queued, CommandStatus::Sent, 40), &[]).await.expect("sent"));
    let ev = [event("ev-b", &d, EventType::COMMAND_ACKNOWLEDGED, Some("c1"))];
    let d2 = PubSubDelivery { command_updates: &updates, ..delivery("m2", Some((&d, 2)), None, &ev) };
    assert_eq!(store.apply_pubsub(d2).await.expect("apply"), PubSubOutcome::Applied);
    let c1 = store.command_for_device(&d, "c1").await.expect("read").expect("c1");
    assert_eq!((c1.status, c1.result, c1.updated_at), (CommandStatus::Acknowledged, Some(json!({ "done": true })), 50));
    // Events only with an update that applied: `ev-a` (c1 was not sent yet) is not logged.
    assert_eq!(event_ids(store).await, ["ev-b"]);
    // c1 is final now: a later result for it changes nothing and logs nothing.
    let ev = [event("ev-c", &d, EventType::COMMAND_ACKNOWLEDGED, Some("c1"))];
    let d4 = PubSubDelivery { command_updates: &updates, ..delivery("m4", Some((&d, 4)), None, &ev) };
    assert_eq!(store.apply_pubsub(d4).await.expect("apply"), PubSubOutcome::Applied);
    assert_eq!(event_ids(store).await, ["ev-b"]);
    // A stale message's updates are not applied.
    let err = [update(&d, "c2", &queued, CommandStatus::Error, 60)];
    let d3 = PubSubDelivery { command_updates: &err, ..delivery("m3", Some((&d, 1)), None, &[]) };
    assert_eq!(store.apply_pubsub(d3).await.expect("apply"), PubSubOutcome::Stale);
    assert_eq!(store.command_for_device(&d, "c2").await.expect("read").expect("c2").status, CommandStatus::Queued);
}

pub async fn pubsub_dead_letters(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    let dead = DeadLetter {
        message_id: Some("m-bad".into()),
        received_at: 77,
        reason: "invalid_json".into(),
        detail: "expected value at line 1".into(),
        body: b"{\"message\":{}}".to_vec(),
    };
    let ev = [event("ev-dl", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert!(store.record_dead_letter(&dead, &ev).await.expect("record"));
    // The same message again is a duplicate, both as a dead letter and as a delivery.
    assert!(!store.record_dead_letter(&dead, &ev).await.expect("record"));
    assert_eq!(store.apply_pubsub(delivery("m-bad", None, None, &ev)).await.expect("apply"), PubSubOutcome::Duplicate);
    // Without a message id: always kept.
    let anonymous = DeadLetter { message_id: None, reason: "invalid_envelope".into(), ..dead.clone() };
    assert!(store.record_dead_letter(&anonymous, &[]).await.expect("record"));
    assert!(store.record_dead_letter(&anonymous, &[]).await.expect("record"));
    let listed = store.dead_letters(10).await.expect("list");
    assert_eq!(listed, vec![anonymous.clone(), anonymous, dead]);
    assert_eq!(store.dead_letters(1).await.expect("list").len(), 1);
    assert_eq!(event_ids(store).await, ["ev-dl"]);
}

pub async fn pubsub_message_ids_are_pruned(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    for (i, at) in [(1, 100), (2, 200), (3, 300)] {
        let m = format!("m{i}");
        let dl = PubSubDelivery { received_at: at, ..delivery(&m, None, None, &[]) };
        assert_eq!(store.apply_pubsub(dl).await.expect("apply"), PubSubOutcome::Applied);
    }
    assert_eq!(store.prune_pubsub_messages(250, 1).await.expect("prune"), 1);
    assert_eq!(store.prune_pubsub_messages(250, 10).await.expect("prune"), 1);
    assert_eq!(store.prune_pubsub_messages(250, 10).await.expect("prune"), 0);
    // Forgotten ids apply again; the kept one is still a duplicate.
    let ev = [event("ev-again", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert_eq!(store.apply_pubsub(delivery("m1", None, None, &ev)).await.expect("apply"), PubSubOutcome::Applied);
    assert_eq!(store.apply_pubsub(delivery("m3", None, None, &ev)).await.expect("apply"), PubSubOutcome::Duplicate);
}

pub async fn android_operations(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    store.enqueue(&[new_command(&d, "c1", 0), new_command(&d, "c2", 0)], &[]).await.expect("enqueue");
    let queued = [CommandStatus::Queued];
    let op1 = AndroidOperation {
        operation: "enterprises/LC01/devices/dev1/operations/1".into(),
        device_id: d.clone(),
        command_id: "c1".into(),
        created_at: 100,
    };
    let ev = [event("ev-sent", &d, EventType::COMMAND_SENT, Some("c1"))];
    store
        .record_android_operation(&op1, Some(update(&d, "c1", &queued, CommandStatus::Sent, 100)), &ev)
        .await
        .expect("record");
    let c1 = store.command_for_device(&d, "c1").await.expect("read").expect("c1");
    assert_eq!((c1.status, c1.sent_count), (CommandStatus::Sent, 1));
    assert_eq!(store.android_operation(&op1.operation).await.expect("read"), Some(op1.clone()));
    assert_eq!(store.android_operation("enterprises/LC01/devices/dev1/operations/9").await.expect("read"), None);
    assert_eq!(event_ids(store).await, ["ev-sent"]);

    let op2 = AndroidOperation {
        operation: "enterprises/LC01/devices/dev1/operations/2".into(),
        command_id: "c2".into(),
        created_at: 200,
        ..op1.clone()
    };
    store
        .record_android_operation(&op2, Some(update(&d, "c2", &queued, CommandStatus::Sent, 200)), &[])
        .await
        .expect("record");
    // Only sent commands older than the cut, oldest first.
    assert_eq!(store.unresolved_android_operations(150, 10).await.expect("list"), vec![op1.clone()]);
    assert_eq!(store.unresolved_android_operations(300, 10).await.expect("list"), vec![op1.clone(), op2.clone()]);
    assert_eq!(store.unresolved_android_operations(300, 1).await.expect("list"), vec![op1.clone()]);
    let sent = [CommandStatus::Sent];
    assert!(store.update_command(update(&d, "c1", &sent, CommandStatus::Acknowledged, 300), &[]).await.expect("ack"));
    assert_eq!(store.unresolved_android_operations(300, 10).await.expect("list"), vec![op2.clone()]);

    // One operation name binds once; the failed attempt changes nothing.
    let again = AndroidOperation { command_id: "c2".into(), ..op1.clone() };
    let ev = [event("ev-never", &d, EventType::COMMAND_SENT, Some("c2"))];
    assert!(store.record_android_operation(&again, None, &ev).await.is_err());
    assert_eq!(store.android_operation(&op1.operation).await.expect("read"), Some(op1));
    assert_eq!(event_ids(store).await, ["ev-sent"]);
}

pub async fn android_policy_commands(store: &dyn Store) {
    let d = id("android:LC01:dev1");
    let other = id("android:LC01:dev2");
    store
        .enqueue(&[new_command(&d, "c1", 0), new_command(&d, "c2", 0), new_command(&other, "c3", 0)], &[])
        .await
        .expect("enqueue");
    let queued = [CommandStatus::Queued];
    let p1 = AndroidPolicyCommand {
        device_id: d.clone(),
        command_id: "c1".into(),
        policy: "enterprises/LC01/policies/device-dev1".into(),
        policy_version: 9_007_199_254_740_993,
        settings: vec!["cameraAccess".into(), "passwordPolicies".into()],
        package: None,
        created_at: 100,
    };
    let ev = [event("ev-sent", &d, EventType::COMMAND_SENT, Some("c1"))];
    assert!(
        store
            .record_android_policy_command(&p1, update(&d, "c1", &queued, CommandStatus::Sent, 100), &ev)
            .await
            .expect("record")
    );
    let c1 = store.command_for_device(&d, "c1").await.expect("read").expect("c1");
    assert_eq!(c1.status, CommandStatus::Sent);
    assert_eq!(event_ids(store).await, ["ev-sent"]);
    let p2 = AndroidPolicyCommand {
        command_id: "c2".into(),
        policy_version: 10,
        settings: vec!["applications".into()],
        package: Some("com.example.app".into()),
        created_at: 200,
        ..p1.clone()
    };
    store
        .record_android_policy_command(&p2, update(&d, "c2", &queued, CommandStatus::Sent, 200), &[])
        .await
        .expect("record");
    let p3 = AndroidPolicyCommand { device_id: other.clone(), command_id: "c3".into(), created_at: 50, ..p1.clone() };
    store
        .record_android_policy_command(&p3, update(&other, "c3", &queued, CommandStatus::Sent, 50), &[])
        .await
        .expect("record");
    // Per device, oldest first; across devices by age, up to the cut.
    assert_eq!(store.pending_android_policy_commands(&d).await.expect("list"), vec![p1.clone(), p2.clone()]);
    assert_eq!(store.unresolved_android_policy_commands(150, 10).await.expect("list"), vec![p3.clone(), p1.clone()]);
    assert_eq!(store.unresolved_android_policy_commands(300, 2).await.expect("list"), vec![p3.clone(), p1.clone()]);
    // A resolved command is no longer pending.
    let sent = [CommandStatus::Sent];
    assert!(store.update_command(update(&d, "c1", &sent, CommandStatus::Acknowledged, 300), &[]).await.expect("ack"));
    assert_eq!(store.pending_android_policy_commands(&d).await.expect("list"), vec![p2.clone()]);
    // The Pub/Sub view says whether there are any, so a report reads them only then.
    let pending = |dev: DeviceId| async move { store.pubsub_view("m-x", Some(&dev)).await.expect("view") };
    assert!(pending(d.clone()).await.policy_commands_pending);
    assert!(store.update_command(update(&d, "c2", &sent, CommandStatus::Error, 310), &[]).await.expect("error"));
    assert!(!pending(d.clone()).await.policy_commands_pending, "resolved ones do not count");
    assert!(!pending(id("android:LC01:none")).await.policy_commands_pending);
    // A command not in `from` any more: nothing stored, no event.
    let ev = [event("ev-never", &d, EventType::COMMAND_SENT, Some("c1"))];
    let stale = AndroidPolicyCommand { policy_version: 11, ..p1.clone() };
    assert!(
        !store
            .record_android_policy_command(&stale, update(&d, "c1", &queued, CommandStatus::Sent, 400), &ev)
            .await
            .expect("record")
    );
    assert_eq!(event_ids(store).await, ["ev-sent"]);
    assert_eq!(store.pending_android_policy_commands(&other).await.expect("list"), vec![p3]);
    assert!(pending(other).await.policy_commands_pending);
}

// ---- Enrollment gate ------------------------------------------------------------------------

pub async fn users_devices_are_counted_across_platforms(store: &dyn Store) {
    let mut n = 0;
    for (device, user, state) in [
        ("apple:U1", "Ann@Example.com", EnrollmentState::Enrolled),
        ("windows:U2", "ann@example.com", EnrollmentState::Enrolled),
        ("android:LC1:U3", "ANN@EXAMPLE.COM", EnrollmentState::Authenticated),
        ("windows:U4", "ann@example.com", EnrollmentState::Unenrolled),
        ("windows:U5", "bob@example.com", EnrollmentState::Enrolled),
    ] {
        let mut e = Enrollment::new(id(device), 1);
        e.state = state;
        e.inventory.enrolled_user = Some(user.into());
        store.save_enrollment(&e, &[]).await.expect("save");
        n += 1;
    }
    // A user channel of ann's Mac does not count as another device.
    let mut child = Enrollment::new(id("apple:U1:501"), 1);
    child.parent = Some(id("apple:U1"));
    child.state = EnrollmentState::Enrolled;
    child.inventory.enrolled_user = Some("ann@example.com".into());
    store.save_enrollment(&child, &[]).await.expect("save");
    assert_eq!(n, 5);
    assert_eq!(store.count_user_devices("ann@example.com", None).await.expect("count"), 3);
    assert_eq!(store.count_user_devices("ANN@example.com", Some(&id("windows:U2"))).await.expect("count"), 2);
    assert_eq!(store.count_user_devices("bob@example.com", None).await.expect("count"), 1);
    assert_eq!(store.count_user_devices("nobody@example.com", None).await.expect("count"), 0);
}

pub async fn corporate_identifiers_replace_and_enroll(store: &dyn Store) {
    let rows = |v: &[(&str, &str)]| v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>();
    let n = store
        .replace_corporate_identifiers(IdentifierKind::Serial, &rows(&[("C02B", "Ann's Mac"), ("C02A", "spare")]), 10)
        .await
        .expect("import");
    assert_eq!(n, 2);
    store
        .replace_corporate_identifiers(IdentifierKind::Imei, &rows(&[("356938035643809", "phone")]), 10)
        .await
        .expect("import");
    let d = id("apple:U1");
    assert!(store.mark_corporate_identifier_enrolled(IdentifierKind::Serial, "C02B", &d, 20).await.expect("mark"));
    assert!(!store.mark_corporate_identifier_enrolled(IdentifierKind::Serial, "NOPE", &d, 20).await.expect("mark"));
    let b = store.corporate_identifier(IdentifierKind::Serial, "C02B").await.expect("read").expect("listed");
    assert_eq!((b.enrolled_device, b.enrolled_at, b.details.as_str()), (Some(d.clone()), Some(20), "Ann's Mac"));
    assert_eq!(store.corporate_identifier(IdentifierKind::Imei, "C02B").await.expect("read"), None, "kinds are apart");

    // A new list: kept identifiers keep their state (and take the new details), dropped ones go.
    let n = store
        .replace_corporate_identifiers(IdentifierKind::Serial, &rows(&[("C02B", "Ann's MacBook"), ("C02C", "")]), 30)
        .await
        .expect("import");
    assert_eq!(n, 2);
    let listed = store.corporate_identifiers(IdentifierKind::Serial, None, 10).await.expect("list");
    let ids: Vec<&str> = listed.iter().map(|c| c.identifier.as_str()).collect();
    assert_eq!(ids, ["C02B", "C02C"]);
    assert_eq!(
        (listed[0].enrolled_device.as_ref(), listed[0].details.as_str(), listed[0].created_at),
        (Some(&d), "Ann's MacBook", 10)
    );
    assert_eq!((listed[1].enrolled_device.as_ref(), listed[1].created_at), (None, 30));
    let page = store.corporate_identifiers(IdentifierKind::Serial, Some("C02B"), 10).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(store.corporate_identifiers(IdentifierKind::Imei, None, 10).await.expect("list").len(), 1);
    assert_eq!(store.replace_corporate_identifiers(IdentifierKind::Serial, &[], 40).await.expect("clear"), 0);
}

pub async fn android_queued_commands_in_order(store: &dyn Store) {
    let a = id("android:LC01:dev1");
    let b = id("android:LC02:dev9");
    let apple = id("apple:UDID-1");
    let win = id("windows:W1");
    store
        .enqueue(
            &[
                new_command(&a, "a1", 0),
                new_command(&apple, "x1", 5),
                new_command(&b, "b1", 5),
                new_command(&win, "w1", 0),
                new_command(&a, "a2", 0),
            ],
            &[],
        )
        .await
        .expect("enqueue");
    let ids = |v: Vec<super::CommandRecord>| v.into_iter().map(|c| c.command_id).collect::<Vec<_>>();
    // Android only, high priority first, then in queue order.
    assert_eq!(ids(store.queued_android_commands(10).await.expect("list")), ["b1", "a1", "a2"]);
    assert_eq!(ids(store.queued_android_commands(1).await.expect("list")), ["b1"]);
    // Sent ones are no longer queued.
    let queued = [CommandStatus::Queued];
    assert!(store.update_command(update(&b, "b1", &queued, CommandStatus::Sent, 200), &[]).await.expect("sent"));
    assert!(store.update_command(update(&a, "a2", &queued, CommandStatus::Error, 200), &[]).await.expect("err"));
    assert_eq!(ids(store.queued_android_commands(10).await.expect("list")), ["a1"]);
}

pub async fn android_signup_completes_once(store: &dyn Store) {
    let signup = AndroidSignup {
        name: "signupUrls/S1".into(),
        state_sha256: "aa".repeat(32),
        url: "https://enterprise.google.com/signup/android/email?callbackUrl=x".into(),
        callback_url: "https://gw/cb?state=z".into(),
        project_id: "p1".into(),
        created_at: 100,
        completed_at: None,
        enterprise: None,
    };
    store.save_android_signup(&signup).await.expect("save");
    assert!(store.save_android_signup(&signup).await.is_err(), "same name twice");
    assert_eq!(store.android_signup_by_state(&signup.state_sha256).await.expect("read"), Some(signup.clone()));
    assert_eq!(store.android_signup_by_state(&"bb".repeat(32)).await.expect("read"), None);
    assert!(store.android_enterprises().await.expect("list").is_empty());

    let d = id("android:LC01:dev1");
    let ent = AndroidEnterprise {
        name: "enterprises/LC01".into(),
        project_id: "p1".into(),
        signup_name: Some(signup.name.clone()),
        pubsub_topic: Some("projects/p1/topics/t".into()),
        created_at: 150,
    };
    let ev = [event("ev-ent", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert!(store.complete_android_signup(&signup.name, &ent, &ev).await.expect("complete"));
    let done = store.android_signup_by_state(&signup.state_sha256).await.expect("read").expect("signup");
    assert_eq!((done.completed_at, done.enterprise.as_deref()), (Some(150), Some("enterprises/LC01")));
    assert_eq!(store.android_enterprises().await.expect("list"), vec![ent.clone()]);
    // A second completion (a replayed callback) stores nothing.
    let other = AndroidEnterprise { name: "enterprises/LC02".into(), created_at: 160, ..ent.clone() };
    let ev2 = [event("ev-never", &d, EventType::DEVICE_STATUS_REPORT, None)];
    assert!(!store.complete_android_signup(&signup.name, &other, &ev2).await.expect("complete"));
    assert!(!store.complete_android_signup("signupUrls/none", &other, &ev2).await.expect("complete"));
    assert_eq!(store.android_enterprises().await.expect("list"), vec![ent.clone()]);
    assert_eq!(event_ids(store).await, ["ev-ent"]);

    // A newer signup's enterprise comes first.
    let s2 = AndroidSignup { name: "signupUrls/S2".into(), state_sha256: "cc".repeat(32), ..signup.clone() };
    store.save_android_signup(&s2).await.expect("save");
    assert!(store.complete_android_signup(&s2.name, &other, &[]).await.expect("complete"));
    let names: Vec<String> = store.android_enterprises().await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["enterprises/LC02", "enterprises/LC01"]);
}

// --- cluster (s4): two handles on one database, as two gateway instances ---

/// A lease has one holder at a time; it is renewed by its holder only, taken over once expired,
/// and released at once by its holder.
pub async fn cluster_leases_are_exclusive_and_expire(a: &dyn Store, b: &dyn Store) {
    assert!(a.acquire_lease("relay:nats", "i1", 1_000, 1_000).await.expect("acquire"));
    assert!(!b.acquire_lease("relay:nats", "i2", 1_500, 1_000).await.expect("held by i1"));
    assert!(b.acquire_lease("expiry", "i2", 1_500, 1_000).await.expect("another lease is free"));
    // Renewal keeps the acquisition time and moves the expiry.
    assert!(a.acquire_lease("relay:nats", "i1", 1_600, 1_000).await.expect("renew"));
    let leases = b.leases().await.expect("leases");
    let nats = leases.iter().find(|l| l.name == "relay:nats").expect("listed");
    assert_eq!((nats.holder.as_str(), nats.acquired_at_ms, nats.expires_at_ms), ("i1", 1_000, 2_600));
    assert_eq!(leases.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["expiry", "relay:nats"]);
    assert!(!b.acquire_lease("relay:nats", "i2", 2_599, 1_000).await.expect("not yet expired"));
    // Expired: another holder takes it; the former one can neither renew nor release it.
    assert!(b.acquire_lease("relay:nats", "i2", 2_600, 1_000).await.expect("take over"));
    assert!(!a.acquire_lease("relay:nats", "i1", 2_700, 1_000).await.expect("lost"));
    assert!(!a.release_lease("relay:nats", "i1").await.expect("not i1's"));
    let nats = a.leases().await.expect("leases").into_iter().find(|l| l.name == "relay:nats").expect("listed");
    assert_eq!((nats.holder.as_str(), nats.acquired_at_ms, nats.expires_at_ms), ("i2", 2_600, 3_600));
    // Released: free at once, long before it would expire.
    assert!(b.release_lease("relay:nats", "i2").await.expect("release"));
    assert!(a.acquire_lease("relay:nats", "i1", 2_800, 1_000).await.expect("free after release"));

    // Many contenders at once, on both handles: exactly one wins.
    let attempts = (0..16).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        async move { store.acquire_lease("retention", &format!("c{i}"), 5_000, 1_000).await.expect("acquire") }
    });
    let won = futures_util::future::join_all(attempts).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    // Leases are not events.
    assert_eq!(a.last_event_seq().await.expect("seq"), 0);
}

/// The relay's cursor write succeeds only while its writer holds the lease.
pub async fn cluster_sink_cursor_is_fenced_by_the_lease(a: &dyn Store, b: &dyn Store) {
    assert!(a.acquire_lease("relay:webhook", "i1", 1_000, 1_000).await.expect("acquire"));
    assert!(a.set_sink_cursor_leased("webhook", 5, "relay:webhook", "i1").await.expect("write"));
    assert_eq!(b.sink_cursor("webhook").await.expect("read"), 5);
    assert!(!b.set_sink_cursor_leased("webhook", 9, "relay:webhook", "i2").await.expect("not the holder"));
    assert_eq!(a.sink_cursor("webhook").await.expect("read"), 5);
    // Expired but not taken over: still its holder's (a successor reads the cursor after).
    assert!(a.set_sink_cursor_leased("webhook", 6, "relay:webhook", "i1").await.expect("write"));
    assert!(b.acquire_lease("relay:webhook", "i2", 2_000, 1_000).await.expect("take over"));
    assert_eq!(b.sink_cursor("webhook").await.expect("read"), 6, "the successor starts where it stopped");
    assert!(!a.set_sink_cursor_leased("webhook", 8, "relay:webhook", "i1").await.expect("lost"));
    assert!(b.set_sink_cursor_leased("webhook", 7, "relay:webhook", "i2").await.expect("new holder"));
    assert_eq!(a.sink_cursor("webhook").await.expect("read"), 7);
    // Released: nobody writes.
    assert!(b.release_lease("relay:webhook", "i2").await.expect("release"));
    assert!(!b.set_sink_cursor_leased("webhook", 10, "relay:webhook", "i2").await.expect("released"));
    // A first write creates the row; other sinks are untouched.
    assert!(b.acquire_lease("relay:nats", "i2", 2_100, 1_000).await.expect("acquire"));
    assert!(b.set_sink_cursor_leased("nats", 3, "relay:nats", "i2").await.expect("write"));
    assert_eq!(a.sink_cursor("nats").await.expect("read"), 3);
    assert_eq!(a.sink_cursor("webhook").await.expect("read"), 7);
    assert!(!a.set_sink_cursor_leased("other", 1, "relay:other", "i1").await.expect("no lease row"));
    assert_eq!(a.sink_cursor("other").await.expect("read"), 0);
}

async fn queue_android(store: &dyn Store, n: usize) -> Vec<String> {
    let d1 = id("android:LC01:dev1");
    let d2 = id("android:LC01:dev2");
    let mut commands: Vec<NewCommand> =
        (0..n).map(|i| new_command(if i % 2 == 0 { &d1 } else { &d2 }, &format!("c{i:02}"), (i % 3) as i32)).collect();
    commands.push(new_command(&id("apple:UDID-CLAIM"), "apple-1", 9));
    commands.push(new_command(&id("windows:W-CLAIM"), "win-1", 9));
    store.enqueue(&commands, &[]).await.expect("enqueue");
    // Delivery order: priority high first, then age.
    let mut order: Vec<(i32, usize)> = (0..n).map(|i| ((i % 3) as i32, i)).collect();
    order.sort_by_key(|(p, i)| (std::cmp::Reverse(*p), *i));
    order.into_iter().map(|(_, i)| format!("c{i:02}")).collect()
}

/// Queued Android commands are claimed by one caller each, in delivery order; claimed commands
/// stay queued (and listed) until their outcome is recorded.
pub async fn cluster_android_claims_are_exclusive(a: &dyn Store, b: &dyn Store) {
    let order = queue_android(a, 10).await;
    let first = a.claim_android_commands("i1", 100, 4).await.expect("claim");
    let ids = |v: &[crate::store::CommandRecord]| v.iter().map(|c| c.command_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), order[..4]);
    assert!(first.iter().all(|c| c.status == CommandStatus::Queued));
    let second = b.claim_android_commands("i2", 100, 50).await.expect("claim");
    assert_eq!(ids(&second), order[4..], "the rest, and no Apple or Windows command");
    assert!(a.claim_android_commands("i1", 101, 50).await.expect("claim").is_empty());
    assert_eq!(a.queued_android_commands(50).await.expect("queued").len(), 10, "claimed commands stay queued");

    // Released by its holder only: then it is claimable again.
    let c = &second[0];
    assert!(!a.release_android_claim(&c.device_id, &c.command_id, "i1").await.expect("not i1's"));
    assert!(b.release_android_claim(&c.device_id, &c.command_id, "i2").await.expect("release"));
    let again = a.claim_android_commands("i1", 102, 50).await.expect("claim");
    assert_eq!(ids(&again), std::slice::from_ref(&c.command_id));
    // A command that left `queued` cannot be released (its claim is over).
    let update = CommandUpdate {
        device_id: &first[0].device_id,
        command_id: &first[0].command_id,
        from: &[CommandStatus::Queued],
        to: CommandStatus::Sent,
        result: None,
        error: None,
        now: 103,
    };
    assert!(a.update_command(update, &[]).await.expect("update"));
    assert!(!a.release_android_claim(&first[0].device_id, &first[0].command_id, "i1").await.expect("sent"));
    assert!(b.claim_android_commands("i2", 104, 50).await.expect("claim").is_empty());

    // Many claimers at once on both handles: every command is claimed exactly once.
    let more = id("android:LC02:dev3");
    let commands: Vec<NewCommand> = (0..30).map(|i| new_command(&more, &format!("m{i:02}"), 0)).collect();
    b.enqueue(&commands, &[]).await.expect("enqueue");
    let claimers = (0..12).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim_android_commands(&format!("k{i}"), 200, 2).await.expect("claim");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| c.command_id));
            }
        }
    });
    let mut all: Vec<String> = futures_util::future::join_all(claimers).await.into_iter().flatten().collect();
    all.sort();
    let expected: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    assert_eq!(all, expected, "each command claimed once");
}

/// A device's policy changes (`policies.patch`) are claimed one at a time, in queue order, on
/// whichever handle: each patches the policy the one before it wrote. Other commands of that
/// device, and other devices' policy changes, are not held back.
pub async fn cluster_policy_commands_are_claimed_in_order(a: &dyn Store, b: &dyn Store) {
    let x = id("android:LC03:devx");
    let y = id("android:LC03:devy");
    let policy = |d: &DeviceId, c: &str| NewCommand { request_type: "policies.patch".into(), ..new_command(d, c, 0) };
    let commands = [policy(&x, "p1"), new_command(&x, "lock", 0), policy(&x, "p2"), policy(&y, "q1"), policy(&x, "p3")];
    a.enqueue(&commands, &[]).await.expect("enqueue");
    let ids = |v: Vec<crate::store::CommandRecord>| v.into_iter().map(|c| c.command_id).collect::<Vec<_>>();
    assert_eq!(ids(a.claim_android_commands("i1", 100, 50).await.expect("claim")), ["p1", "lock", "q1"]);
    // p2 waits while p1 is queued (claimed and being sent), whoever asks.
    assert!(b.claim_android_commands("i2", 101, 50).await.expect("claim").is_empty());
    let sent = CommandUpdate {
        device_id: &x,
        command_id: "p1",
        from: &[CommandStatus::Queued],
        to: CommandStatus::Sent,
        result: None,
        error: None,
        now: 102,
    };
    assert!(a.update_command(sent, &[]).await.expect("sent"));
    assert_eq!(ids(b.claim_android_commands("i2", 103, 50).await.expect("claim")), ["p2"]);
    assert!(a.claim_android_commands("i1", 104, 50).await.expect("claim").is_empty(), "p3 waits for p2");
    // A released claim keeps its place: p2 again, never p3 first.
    assert!(b.release_android_claim(&x, "p2", "i2").await.expect("release"));
    assert_eq!(ids(a.claim_android_commands("i1", 105, 50).await.expect("claim")), ["p2"]);
}

/// A claim is abandoned once its instance's heartbeat lease is not held.
pub async fn cluster_abandoned_claims_follow_heartbeats(a: &dyn Store, b: &dyn Store) {
    queue_android(a, 4).await;
    let hb1 = crate::store::instance_lease("i1");
    let hb2 = crate::store::instance_lease("i2");
    assert_eq!(hb1, "instance:i1");
    assert!(a.acquire_lease(&hb1, "i1", 1_000_000, 15_000).await.expect("heartbeat"));
    assert!(b.acquire_lease(&hb2, "i2", 1_000_000, 15_000).await.expect("heartbeat"));
    let mine = a.claim_android_commands("i1", 1_000, 2).await.expect("claim");
    let theirs = b.claim_android_commands("i2", 1_001, 2).await.expect("claim");
    assert!(a.abandoned_android_claims(1_005_000, 10).await.expect("abandoned").is_empty(), "both alive");
    // i2 stops renewing; i1 renews.
    assert!(a.acquire_lease(&hb1, "i1", 1_010_000, 15_000).await.expect("renew"));
    let gone = a.abandoned_android_claims(1_015_000, 10).await.expect("abandoned");
    let got: Vec<(&str, &str, i64)> =
        gone.iter().map(|c| (c.command.command_id.as_str(), c.holder.as_str(), c.claimed_at)).collect();
    let want: Vec<(&str, &str, i64)> = theirs.iter().map(|c| (c.command_id.as_str(), "i2", 1_001)).collect();
    assert_eq!(got, want);
    assert_eq!(gone[0].command, theirs[0]);
    // A released heartbeat (clean shutdown) abandons at once.
    assert!(a.release_lease(&hb1, "i1").await.expect("release"));
    let now_gone = b.abandoned_android_claims(1_011_000, 10).await.expect("abandoned");
    assert_eq!(now_gone.iter().map(|c| c.holder.as_str()).collect::<Vec<_>>(), ["i1", "i1"]);
    assert_eq!(b.abandoned_android_claims(1_015_000, 10).await.expect("abandoned").len(), 4);
    assert_eq!(b.abandoned_android_claims(1_015_000, 3).await.expect("abandoned").len(), 3, "limit");
    // Resolved commands are no longer abandoned claims.
    let update = CommandUpdate {
        device_id: &mine[0].device_id,
        command_id: &mine[0].command_id,
        from: &[CommandStatus::Queued],
        to: CommandStatus::Error,
        result: None,
        error: Some(json!({"code": "dispatch_interrupted"})),
        now: 1_012,
    };
    assert!(b.update_command(update, &[]).await.expect("update"));
    assert!(b.release_android_claim(&mine[1].device_id, &mine[1].command_id, "i1").await.expect("release"));
    let left = a.abandoned_android_claims(1_015_000, 10).await.expect("abandoned");
    assert_eq!(left.iter().map(|c| c.holder.as_str()).collect::<Vec<_>>(), ["i2", "i2"]);
}

/// The request budget is one sliding window for every handle.
pub async fn cluster_budget_is_shared(a: &dyn Store, b: &dyn Store) {
    async fn take(store: &dyn Store, now: i64) -> super::BudgetTake {
        store.take_budget("amapi:p1", now, 1_000, 3).await.expect("take")
    }
    assert_eq!(take(a, 10_000).await, super::BudgetTake { granted: true, in_window: 1, next_free_ms: None });
    assert!(take(b, 10_100).await.granted);
    assert!(take(a, 10_200).await.granted);
    let refused = take(b, 10_300).await;
    assert_eq!(refused, super::BudgetTake { granted: false, in_window: 3, next_free_ms: Some(11_000) });
    assert!(!take(a, 10_999).await.granted);
    // The first grant leaves the window at 11 000.
    let freed = take(a, 11_000).await;
    assert!(freed.granted);
    assert_eq!(freed.in_window, 3);
    assert_eq!(take(b, 11_050).await.next_free_ms, Some(11_100));
    // Other buckets are separate.
    assert!(b.take_budget("amapi:p2", 11_050, 1_000, 3).await.expect("take").granted);

    // Many takers at once on both handles: exactly `limit` grants.
    let takers = (0..20).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        async move { store.take_budget("amapi:burst", 50_000, 100_000, 7).await.expect("take").granted }
    });
    let granted = futures_util::future::join_all(takers).await;
    assert_eq!(granted.iter().filter(|g| **g).count(), 7, "{granted:?}");
}

/// Two instances write for the same device, each after the other's write committed (a device
/// served by whichever instance it reaches): the log holds the device's events in that order,
/// while both also append for other devices concurrently; positions have no gaps and both
/// handles read the same log.
pub async fn cluster_device_order_across_handles(a: &dyn Store, b: &dyn Store) {
    let device = id("android:LC01:ordered");
    const STEPS: usize = 40;
    let chain = async {
        for i in 0..STEPS {
            let store = if i % 2 == 0 { a } else { b };
            let ev = event(&format!("step-{i:02}"), &device, EventType::DEVICE_STATUS_REPORT, None);
            match i % 3 {
                0 => store.append_events(&[ev]).await.expect("append"),
                1 => store.enqueue(&[new_command(&device, &format!("o{i}"), 0)], &[ev]).await.expect("enqueue"),
                _ => store.save_enrollment(&Enrollment::new(device.clone(), i as i64), &[ev]).await.expect("save"),
            }
        }
    };
    let others = (0..4).map(|w| {
        let store = if w % 2 == 0 { a } else { b };
        async move {
            let d = id(&format!("android:LC01:noise{w}"));
            for i in 0..STEPS {
                let ev = event(&format!("noise-{w}-{i:02}"), &d, EventType::DEVICE_STATUS_REPORT, None);
                store.append_events(&[ev]).await.expect("append");
            }
        }
    });
    let (_, _) = tokio::join!(chain, futures_util::future::join_all(others));
    let total = STEPS * 5;
    let from_a = a.events_after(0, 10_000).await.expect("read");
    let from_b = b.events_after(0, 10_000).await.expect("read");
    assert_eq!(from_a, from_b, "both handles read one log");
    assert_eq!(from_a.len(), total);
    assert_eq!(from_a.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=total as i64).collect::<Vec<_>>());
    let ordered: Vec<String> = from_a
        .iter()
        .filter(|e| e.device_id == device.as_str())
        .map(|e| serde_json::from_str::<Event>(&e.json).expect("json").id)
        .collect();
    let expected: Vec<String> = (0..STEPS).map(|i| format!("step-{i:02}")).collect();
    assert_eq!(ordered, expected);
}

// ---- PostgreSQL test databases --------------------------------------------------------------

/// The server the PostgreSQL tests use: `MDM_TEST_POSTGRES_URL`. Without it the tests fail, so a
/// CI that forgot to start PostgreSQL cannot pass by running nothing, unless
/// `MDM_SKIP_POSTGRES=1` says to skip them (then `None`).
pub fn postgres_test_url() -> Option<String> {
    match std::env::var("MDM_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("MDM_SKIP_POSTGRES").as_deref() == Ok("1") => {
            eprintln!("skipped: MDM_SKIP_POSTGRES=1 (no PostgreSQL for this test)");
            None
        }
        _ => panic!(
            "MDM_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server. Start one with \
             `export MDM_TEST_POSTGRES_URL=\"$(bash .ci/pg-setup.sh)\"`, or set MDM_SKIP_POSTGRES=1 to skip them."
        ),
    }
}

/// A schema of its own on the test server, so tests run in parallel on one database; dropped
/// (with everything in it) when this is dropped.
#[derive(Debug)]
pub struct PostgresSchema {
    /// The server URL with this schema as the search path and as the application name: what a
    /// store under test connects with.
    pub url: String,
    /// The schema's name (also the connections' application name).
    pub name: String,
    admin_url: String,
}

impl PostgresSchema {
    /// A new, empty schema on the server of [`postgres_test_url`]; `None` when skipping.
    pub async fn create() -> Option<PostgresSchema> {
        use sqlx_core::connection::Connection as _;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin_url = postgres_test_url()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t_{}_{}_{:08x}", std::process::id(), n, rand::random::<u32>());
        let mut conn = sqlx_postgres::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to MDM_TEST_POSTGRES_URL: {e}"));
        sqlx_core::query::query(sqlx_core::sql_str::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        let _ = conn.close().await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        // No waiting for the WAL flush at commit: a test database need not survive a crash.
        let url = format!(
            "{admin_url}{sep}options[search_path]={name}&options[synchronous_commit]=off&application_name={name}"
        );
        Some(PostgresSchema { url, name, admin_url })
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        // Drop runs in async tests: do the async clean-up on a thread of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            use sqlx_core::connection::Connection as _;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx_postgres::PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                sqlx_core::query::query(sqlx_core::sql_str::AssertSqlSafe(sql)).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}

// ---- android ingest (s4) ----------------------------------------------------------------------

pub async fn pubsub_view_reads_what_intake_needs(store: &dyn Store) {
    use super::PubSubView;
    let d = id("android:LC01:view1");
    assert_eq!(store.pubsub_view("m1", Some(&d)).await.expect("view"), PubSubView::default());
    assert_eq!(store.pubsub_view("m1", None).await.expect("view"), PubSubView::default());
    let mut e = android_enrollment(&d, EnrollmentState::Enrolled, 10);
    e.inventory.serial_number = Some("SN1".into());
    e.attributes.insert("name".into(), json!("enterprises/LC01/devices/view1"));
    e.last_seen = Some(9);
    store.apply_pubsub(delivery("m1", Some((&d, 5_000)), Some(&e), &[])).await.expect("apply");
    let v = store.pubsub_view("m1", Some(&d)).await.expect("view");
    assert_eq!(
        v,
        PubSubView { seen: true, watermark_ms: Some(5_000), enrollment: Some(e.clone()), ..PubSubView::default() }
    );
    // Another message, another device: nothing known about them.
    let other = id("android:LC01:view2");
    assert_eq!(store.pubsub_view("m2", Some(&other)).await.expect("view"), PubSubView::default());
    // Stale and dead-lettered ids are seen too; the watermark did not move.
    store.apply_pubsub(delivery("m0", Some((&d, 4_000)), None, &[])).await.expect("apply");
    let v = store.pubsub_view("m0", Some(&d)).await.expect("view");
    assert!(v.seen);
    assert_eq!(v.watermark_ms, Some(5_000));
    let dead = DeadLetter {
        message_id: Some("m-dead".into()),
        received_at: 1,
        reason: "bad_base64".into(),
        detail: "x".into(),
        body: b"{}".to_vec(),
    };
    store.record_dead_letter(&dead, &[]).await.expect("dead letter");
    assert!(store.pubsub_view("m-dead", None).await.expect("view").seen);
    // Without ordering (enterprise-level) the watermark is not touched.
    store.apply_pubsub(delivery("m3", None, None, &[])).await.expect("apply");
    assert_eq!(store.pubsub_view("m3", Some(&d)).await.expect("view").watermark_ms, Some(5_000));
}

pub async fn pubsub_report_writes_only_its_columns(store: &dyn Store) {
    let d = id("android:LC01:rep1");
    let mut e = android_enrollment(&d, EnrollmentState::Enrolled, 10);
    e.inventory.serial_number = Some("SN1".into());
    e.attributes.insert("last_status_report_time".into(), json!("t1"));
    e.last_seen = Some(9);
    e.enrolled_at = Some(8);
    store.apply_pubsub(delivery("m1", Some((&d, 1)), Some(&e), &[])).await.expect("apply");

    // A report: attributes, last_seen and updated_at are written, nothing else (even what the
    // value passed differs in).
    let mut report = e.clone();
    report.attributes.insert("last_status_report_time".into(), json!("t2"));
    report.last_seen = Some(20);
    report.updated_at = 21;
    report.inventory.serial_number = Some("not written".into());
    report.state = EnrollmentState::Unenrolled;
    let ev = [event("ev-r", &d, EventType::DEVICE_STATUS_REPORT, None)];
    let write = PubSubDelivery {
        enrollment: Some(EnrollmentWrite::Report(&report)),
        ..delivery("m2", Some((&d, 2)), None, &ev)
    };
    assert_eq!(store.apply_pubsub(write).await.expect("apply"), PubSubOutcome::Applied);
    let stored = store.enrollment(&d).await.expect("read").expect("enrollment");
    let mut expected = e.clone();
    expected.attributes.insert("last_status_report_time".into(), json!("t2"));
    expected.last_seen = Some(20);
    expected.updated_at = 21;
    assert_eq!(stored, expected);
    assert_eq!(event_ids(store).await, ["ev-r"]);

    // A report for a row that is not there: nothing applied, and the message is not taken as
    // handled (its redelivery applies).
    let gone = id("android:LC01:rep2");
    let missing = android_enrollment(&gone, EnrollmentState::Enrolled, 10);
    let ev = [event("ev-lost", &gone, EventType::DEVICE_STATUS_REPORT, None)];
    let write = PubSubDelivery {
        enrollment: Some(EnrollmentWrite::Report(&missing)),
        ..delivery("m3", Some((&gone, 3)), None, &ev)
    };
    assert!(matches!(store.apply_pubsub(write).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.pubsub_view("m3", Some(&gone)).await.expect("view"), super::PubSubView::default());
    assert_eq!(event_ids(store).await, ["ev-r"]);
    let full = PubSubDelivery {
        enrollment: Some(EnrollmentWrite::Full(&missing)),
        ..delivery("m3", Some((&gone, 3)), None, &ev)
    };
    assert_eq!(store.apply_pubsub(full).await.expect("apply"), PubSubOutcome::Applied);
    assert_eq!(store.enrollment(&gone).await.expect("read"), Some(missing));
}

/// Batches of every size up to a few multi-row inserts keep their order and content.
pub async fn event_batches_keep_their_order(store: &dyn Store) {
    let d = id("android:LC01:batch");
    let mut expected = Vec::new();
    for n in [1usize, 2, 3, 4, 5, 9] {
        let batch: Vec<Event> =
            (0..n).map(|i| event(&format!("b{n}-{i}"), &d, EventType::DEVICE_STATUS_REPORT, None)).collect();
        store.append_events(&batch).await.expect("append");
        expected.extend(batch.iter().map(|e| e.id.clone()));
    }
    assert_eq!(event_ids(store).await, expected);
    let logged = store.events_after(0, 100).await.expect("read");
    assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq));
}
