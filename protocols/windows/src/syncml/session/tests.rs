use super::*;
use crate::syncml::message::{Container, ItemCommand, decode};
use crate::syncml::translate::translate;

const SERVER: &str = "https://mdm.example/ManagementServer/MDM.svc";

fn cfg() -> ServerConfig {
    ServerConfig {
        server_uri: SERVER.into(),
        max_msg_size: 4096,
        max_obj_size: 100_000,
        default_client_max_msg_size: 524_288,
    }
}

fn client(session: &str, msg_id: u32, commands: Vec<Command>, final_: bool, max_msg: Option<usize>) -> SyncMl {
    SyncMl {
        hdr: SyncHdr {
            ver_dtd: "1.2".into(),
            ver_proto: "DM/1.2".into(),
            session_id: session.into(),
            msg_id,
            target: SERVER.into(),
            source: "DEV1".into(),
            no_resp: false,
            meta: max_msg.map(|m| Meta::default().with("MaxMsgSize", m.to_string())),
        },
        body: SyncBody { commands, final_ },
    }
}

fn alert(id: &str, code: u16, items: Vec<Item>) -> Command {
    Command::Alert(Alert { cmd_id: id.into(), no_resp: false, code: AlertCode(code), correlator: None, items })
}

fn typed(t: &str, data: &str) -> Item {
    Item { meta: Some(Meta::default().with("Type", t)), data: Some(data.into()), ..Item::default() }
}

fn status_for(reply: &SyncMl, cmd: &Command, code: u16, id: &str) -> Command {
    Command::Status(Status {
        cmd_id: id.into(),
        msg_ref: reply.hdr.msg_id.to_string(),
        cmd_ref: cmd.cmd_id().into(),
        cmd: cmd.name().into(),
        target_ref: vec![],
        source_ref: vec![],
        code: StatusCode(code),
        items: vec![],
    })
}

fn server_commands(reply: &SyncMl) -> Vec<&Command> {
    reply.body.commands.iter().filter(|c| !matches!(c, Command::Status(_))).collect()
}

fn payload(v: serde_json::Value) -> (String, Vec<u8>) {
    let t = translate(&serde_json::from_value(v).unwrap()).unwrap();
    (t.request_type.clone(), t.payload())
}

fn start() -> SyncMl {
    let devinfo = Command::Replace(ItemCommand {
        cmd_id: "4".into(),
        items: vec![Item { source: Some("./DevInfo/DevId".into()), data: Some("DEV1".into()), ..Item::default() }],
        ..ItemCommand::default()
    });
    client(
        "1A",
        1,
        vec![alert("2", 1201, vec![]), alert("3", 1224, vec![typed(LOGIN_STATUS_TYPE, "user")]), devinfo],
        true,
        None,
    )
}

#[test]
fn empty_queue_ends_the_session_after_statuses() {
    let step = handle(None, &start(), &[], &cfg(), 100).unwrap();
    assert_eq!(step.effects[0], Effect::SessionStarted { alert: AlertCode(1201), login_status: Some("user".into()) });
    assert!(
        matches!(&step.effects[1], Effect::DeviceInfo { nodes } if nodes == &vec![("./DevInfo/DevId".to_string(), "DEV1".to_string())])
    );
    let statuses: Vec<(String, String, u16)> = step
        .reply
        .body
        .commands
        .iter()
        .map(|c| match c {
            Command::Status(s) => (s.cmd.clone(), s.cmd_ref.clone(), s.code.0),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("SyncHdr".into(), "0".into(), 200),
            ("Alert".into(), "2".into(), 200),
            ("Alert".into(), "3".into(), 200),
            ("Replace".into(), "4".into(), 200)
        ]
    );
    assert!(step.reply.body.final_);
    assert_eq!(step.reply.hdr.target, "DEV1");
    assert_eq!(step.reply.hdr.source, SERVER);
    assert_eq!(step.session.state, State::Ended { reason: EndReason::Completed });
    // The reply decodes back to itself.
    assert_eq!(decode(&step.reply.encode()).unwrap(), step.reply);
    // Stored and read back, the session is the same value.
    let json = serde_json::to_string(&step.session).unwrap();
    assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), step.session);
    // A later message of an ended session is refused.
    let err = handle(Some(step.session), &client("1A", 2, vec![], true, None), &[], &cfg(), 101).unwrap_err();
    assert_eq!(err.reason(), "session_ended");
}

#[test]
fn commands_are_sent_and_their_statuses_and_results_finish_them() {
    let (rt_lock, lock) = payload(serde_json::json!({"type": "lock"}));
    let (rt_info, info) =
        payload(serde_json::json!({"type": "device_info", "fields": ["./DevDetail/SwV", "./DevInfo/Mod"]}));
    let queue = [
        Queued { command_id: "c-lock", request_type: &rt_lock, payload: &lock },
        Queued { command_id: "c-info", request_type: &rt_info, payload: &info },
    ];
    let step = handle(None, &start(), &queue, &cfg(), 100).unwrap();
    let sent = server_commands(&step.reply);
    assert_eq!(sent.iter().map(|c| c.name()).collect::<Vec<_>>(), ["Exec", "Get", "Get"]);
    assert_eq!(step.effects.iter().filter(|e| matches!(e, Effect::Sent { .. })).count(), 2, "{:?}", step.effects);
    assert_eq!(step.session.state, State::Responses);
    // CmdIDs are unique in the reply.
    let mut ids: Vec<&str> = step.reply.all_commands().iter().map(|c| c.cmd_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), step.reply.all_commands().len());

    // Message 2: statuses and results. The queue still lists both: in flight, not resent.
    let mut cmds = vec![status_for(&step.reply, &step.reply.body.commands[0], 200, "1")];
    cmds[0] = Command::Status(Status {
        cmd_ref: "0".into(),
        cmd: "SyncHdr".into(),
        ..match &cmds[0] {
            Command::Status(s) => s.clone(),
            _ => unreachable!(),
        }
    });
    cmds.push(status_for(&step.reply, sent[0], 200, "2"));
    cmds.push(status_for(&step.reply, sent[1], 200, "3"));
    cmds.push(status_for(&step.reply, sent[2], 404, "4"));
    cmds.push(Command::Results(Results {
        cmd_id: "5".into(),
        msg_ref: Some(step.reply.hdr.msg_id.to_string()),
        cmd_ref: sent[1].cmd_id().into(),
        meta: None,
        target_ref: None,
        source_ref: None,
        items: vec![Item {
            source: Some("./DevDetail/SwV".into()),
            data: Some("10.0.22631".into()),
            ..Item::default()
        }],
    }));
    let step2 = handle(Some(step.session), &client("1A", 2, cmds, true, None), &queue, &cfg(), 101).unwrap();
    let finished: Vec<(&str, bool)> = step2
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Finished { command_id, ok, .. } => Some((command_id.as_str(), *ok)),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [("c-lock", true), ("c-info", false)]);
    let Some(Effect::Finished { nodes, data, .. }) =
        step2.effects.iter().find(|e| matches!(e, Effect::Finished { command_id, .. } if command_id == "c-info"))
    else {
        panic!()
    };
    assert_eq!(nodes, &vec![("./DevDetail/SwV".to_string(), "10.0.22631".to_string())]);
    assert_eq!(data["statuses"][1]["code"], 404);
    // One status for the Results, nothing more to send: the session ends.
    assert!(server_commands(&step2.reply).is_empty());
    assert!(step2.session.is_ended());
}

#[test]
fn msg_ids_and_session_start_are_enforced() {
    let err = handle(None, &client("2B", 2, vec![alert("1", 1201, vec![])], true, None), &[], &cfg(), 1).unwrap_err();
    assert_eq!(err.reason(), "session_not_started");
    let err = handle(None, &client("2B", 1, vec![], true, None), &[], &cfg(), 1).unwrap_err();
    assert_eq!(err.reason(), "session_not_started");
    let (rt, lock) = payload(serde_json::json!({"type": "restart"}));
    let queue = [Queued { command_id: "c", request_type: &rt, payload: &lock }];
    let step = handle(None, &start(), &queue, &cfg(), 1).unwrap();
    let err = handle(Some(step.session.clone()), &client("1A", 3, vec![], true, None), &queue, &cfg(), 2).unwrap_err();
    assert_eq!(err, SessionError::OutOfOrder { expected: 2, got: 3 });
    // A new SessionID starts over; the command in flight in the old one is offered again.
    let mut m = start();
    m.hdr.session_id = "1B".into();
    let step = handle(Some(step.session), &m, &queue, &cfg(), 3).unwrap();
    assert_eq!(server_commands(&step.reply).len(), 1);
    let mut old = start();
    old.hdr.ver_dtd = "2.0".into();
    assert_eq!(handle(None, &old, &[], &cfg(), 1).unwrap_err().reason(), "unsupported_version");
}

#[test]
fn unenrollment_ends_the_session() {
    let m = client(
        "3C",
        1,
        vec![
            alert("2", 1226, vec![typed(UNENROLL_ALERT_TYPE, "1")]),
            alert("3", 1226, vec![typed("com.example.other", "x")]),
        ],
        true,
        None,
    );
    let (rt, lock) = payload(serde_json::json!({"type": "lock"}));
    let step = handle(None, &m, &[Queued { command_id: "c", request_type: &rt, payload: &lock }], &cfg(), 1).unwrap();
    assert!(step.effects.iter().any(|e| matches!(e, Effect::Unenrolled { .. })));
    assert!(step.effects.iter().any(|e| matches!(e, Effect::Alert { code: AlertCode(1226), .. })));
    assert!(server_commands(&step.reply).is_empty(), "nothing is sent to an unenrolling device");
    assert_eq!(step.session.state, State::Ended { reason: EndReason::Unenrolled });
}

#[test]
fn large_object_to_the_device_goes_in_chunks() {
    let big: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect::<String>() + "<&>é";
    let raw = format!(
        "<Replace><CmdID>1</CmdID><Item><Target><LocURI>./Vendor/MSFT/Big</LocURI></Target><Data>{}</Data></Item></Replace>",
        big.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    let (rt, p) = payload(serde_json::json!({"type": "raw", "platform": "windows", "payload": raw}));
    let queue = [Queued { command_id: "big", request_type: &rt, payload: &p }];
    let mut m = start();
    m.hdr.meta = Some(Meta::default().with("MaxMsgSize", "1500"));
    let mut step = handle(None, &m, &queue, &cfg(), 1).unwrap();
    let mut assembled = String::new();
    let mut msg_id = 1;
    let mut size = None;
    for round in 0.. {
        assert!(step.reply.encode().len() <= 1500, "round {round}: {} bytes", step.reply.encode().len());
        let cmds = server_commands(&step.reply);
        assert_eq!(cmds.len(), 1);
        let item = &cmds[0].items().unwrap().items[0];
        if round == 0 {
            size = item.meta.as_ref().and_then(Meta::size);
        } else {
            assert_eq!(item.meta.as_ref().and_then(Meta::size), None);
        }
        assembled.push_str(item.data.as_deref().unwrap());
        msg_id += 1;
        if !item.more_data {
            assert!(step.reply.body.final_);
            let reply = client("1A", msg_id, vec![status_for(&step.reply, cmds[0], 200, "1")], true, None);
            let done = handle(Some(step.session), &reply, &queue, &cfg(), 2).unwrap();
            assert!(
                done.effects
                    .iter()
                    .any(|e| matches!(e, Effect::Finished { command_id, ok: true, .. } if command_id == "big"))
            );
            break;
        }
        assert!(!step.reply.body.final_);
        assert!(matches!(step.session.state, State::ChunkRequest { .. }));
        let reply = client(
            "1A",
            msg_id,
            vec![status_for(&step.reply, cmds[0], 213, "1"), alert("2", 1222, vec![])],
            true,
            None,
        );
        step = handle(Some(step.session), &reply, &queue, &cfg(), 2).unwrap();
        assert!(step.effects.iter().all(|e| !matches!(e, Effect::Sent { .. })), "sent once");
    }
    assert_eq!(assembled, big);
    assert_eq!(size, Some(big.len() as u64));
}

#[test]
fn large_results_from_the_device_are_assembled() {
    let (rt, p) = payload(serde_json::json!({"type": "device_info", "fields": ["./Vendor/MSFT/Big"]}));
    let queue = [Queued { command_id: "g", request_type: &rt, payload: &p }];
    let step = handle(None, &start(), &queue, &cfg(), 1).unwrap();
    let get = server_commands(&step.reply)[0].clone();
    let chunk = |id: &str, data: &str, more: bool, size: Option<u64>| {
        Command::Results(Results {
            cmd_id: id.into(),
            msg_ref: Some("1".into()),
            cmd_ref: get.cmd_id().into(),
            meta: None,
            target_ref: None,
            source_ref: None,
            items: vec![Item {
                target: None,
                source: Some("./Vendor/MSFT/Big".into()),
                meta: size.map(|s| Meta::default().with("Size", s.to_string())),
                data: Some(data.into()),
                more_data: more,
            }],
        })
    };
    let m2 = client(
        "1A",
        2,
        vec![status_for(&step.reply, &get, 200, "1"), chunk("2", "hello ", true, Some(11))],
        false,
        None,
    );
    let s2 = handle(Some(step.session), &m2, &queue, &cfg(), 2).unwrap();
    assert!(!s2.reply.body.final_);
    let codes: Vec<u16> = s2
        .reply
        .body
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Status(s) => Some(s.code.0),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [200, 213]);
    assert!(matches!(s2.reply.body.commands.last(), Some(Command::Alert(a)) if a.code == AlertCode::NEXT_MESSAGE));
    assert!(s2.effects.is_empty(), "not finished while the object is incomplete: {:?}", s2.effects);
    let m3 = client("1A", 3, vec![chunk("1", "world", false, None)], true, None);
    let s3 = handle(Some(s2.session.clone()), &m3, &queue, &cfg(), 3).unwrap();
    let Some(Effect::Finished { ok: true, nodes, .. }) = s3.effects.first() else { panic!("{:?}", s3.effects) };
    assert_eq!(nodes, &vec![("./Vendor/MSFT/Big".to_string(), "hello world".to_string())]);
    // The declared size is checked.
    let m3 = client("1A", 3, vec![chunk("1", "world!", false, None)], true, None);
    let s3 = handle(Some(s2.session), &m3, &queue, &cfg(), 3).unwrap();
    assert!(matches!(s3.effects.first(), Some(Effect::Finished { ok: false, .. })));
    assert!(
        s3.reply.body.commands.iter().any(|c| matches!(c, Command::Status(s) if s.code == StatusCode::SIZE_MISMATCH))
    );
}

#[test]
fn client_management_commands_are_not_allowed() {
    let m = client(
        "4D",
        1,
        vec![
            alert("1", 1201, vec![]),
            Command::Atomic(Container { cmd_id: "2".into(), ..Container::default() }),
            alert("3", 1100, vec![]),
        ],
        true,
        None,
    );
    let step = handle(None, &m, &[], &cfg(), 1).unwrap();
    let codes: Vec<u16> = step
        .reply
        .body
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::Status(s) => Some(s.code.0),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [200, 200, 405, 406]);
}
