//! Conformance of the sans-IO core with the published contract: the wire
//! fixtures and the OpenAPI document from openai/tunnel-client (Apache-2.0,
//! see tests/fixtures/NOTICE.md).

use std::collections::BTreeMap;
use std::time::Duration;

use mcp_tunnel::proto::channel::Channel;
use mcp_tunnel::proto::command::{
    decode_poll, encode_poll, CommandKind, CommandOut, Decoded, Header, PollLimits,
};
use mcp_tunnel::proto::failure::{write_error, FailureSource, TransportErrorKind, TunnelFailure};
use mcp_tunnel::proto::json::{self, Limits};
use mcp_tunnel::proto::response::{self, RespType, ResponsePost};
use mcp_tunnel::proto::server_info::{self, ChannelDecl};

const POLL_FIXTURE: &[u8] = include_bytes!("fixtures/poll_command_envelope.json");
const NOTIFY_FIXTURE: &[u8] = include_bytes!("fixtures/jsonrpc_notify_response.json");
const OPENAPI: &[u8] = include_bytes!("fixtures/openai-tunnel-openapi.json");

/// A JSON value for structural comparison: object key order is irrelevant,
/// numbers compare by their literal text.
#[derive(Clone, Debug, PartialEq)]
enum V {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<V>),
    Obj(BTreeMap<String, V>),
}

fn parse(bytes: &[u8]) -> V {
    let limits = Limits::default();
    json::validate(bytes, &limits).expect("valid JSON");
    value(bytes.trim_ascii(), &limits)
}

fn value(raw: &[u8], limits: &Limits) -> V {
    match raw[0] {
        b'{' => V::Obj(
            json::object_members(raw, limits)
                .expect("object")
                .into_iter()
                .map(|(k, r)| (k, value(&raw[r], limits)))
                .collect(),
        ),
        b'[' => V::Arr(
            json::array_elements(raw, limits)
                .expect("array")
                .into_iter()
                .map(|r| value(&raw[r], limits))
                .collect(),
        ),
        b'"' => V::Str(json::parse_string(raw).expect("string")),
        b't' => V::Bool(true),
        b'f' => V::Bool(false),
        b'n' => V::Null,
        _ => V::Num(String::from_utf8(raw.to_vec()).expect("ascii number")),
    }
}

impl V {
    fn get(&self, key: &str) -> &V {
        match self {
            V::Obj(m) => m.get(key).unwrap_or_else(|| panic!("no key {key}")),
            other => panic!("not an object looking up {key}: {other:?}"),
        }
    }

    fn path(&self, keys: &[&str]) -> &V {
        keys.iter().fold(self, |v, k| v.get(k))
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            V::Obj(m) => m.keys().map(String::as_str).collect(),
            other => panic!("not an object: {other:?}"),
        }
    }

    fn strings(&self) -> Vec<&str> {
        match self {
            V::Arr(items) => items
                .iter()
                .map(|i| match i {
                    V::Str(s) => s.as_str(),
                    other => panic!("not a string: {other:?}"),
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }
}

fn schema(name: &str) -> V {
    parse(OPENAPI)
        .path(&["components", "schemas", name])
        .clone()
}

/// Raw bytes of `key` inside the top-level object `doc`.
fn raw_member<'a>(doc: &'a [u8], key: &str) -> &'a [u8] {
    let members = json::object_members(doc, &Limits::default()).expect("object");
    let (_, r) = members.into_iter().find(|(k, _)| k == key).expect("member");
    &doc[r]
}

#[test]
fn poll_fixture_decodes_field_by_field() {
    let decoded = decode_poll(POLL_FIXTURE, &PollLimits::default()).expect("poll body");
    assert_eq!(decoded.len(), 2);

    let Decoded::Command(a) = &decoded[0] else {
        panic!("first command skipped: {:?}", decoded[0]);
    };
    assert_eq!(a.request_id, "cmd_fixture_jsonrpc");
    assert_eq!(a.shard_token.as_str(), "fixture:jsonrpc");
    assert_eq!(a.channel, Channel::parse("harpoon").unwrap());
    assert_eq!(a.created_at.as_deref(), Some("2026-06-12T12:13:14.000Z"));
    assert_eq!(a.response_timeout, None);
    assert_eq!(a.headers, vec![Header::new("x-test", "alpha")]);
    assert!(a.warnings.is_empty());
    let CommandKind::JsonRpc { body } = &a.kind else {
        panic!("not jsonrpc: {:?}", a.kind);
    };
    // Byte-exact: the raw value as it sits in the poll body, whitespace included.
    let commands = raw_member(POLL_FIXTURE, "commands");
    let first = json::array_elements(commands, &Limits::default()).unwrap()[0].clone();
    assert_eq!(&body[..], raw_member(&commands[first], "jsonrpc"));
    assert_eq!(
        parse(body),
        parse(br#"{"jsonrpc":"2.0","id":"rpc-1","method":"tools/list","params":{"needle":"hay"}}"#)
    );

    let Decoded::Command(b) = &decoded[1] else {
        panic!("second command skipped: {:?}", decoded[1]);
    };
    assert_eq!(b.request_id, "cmd_fixture_session_end");
    assert_eq!(b.shard_token.as_str(), "fixture:session");
    assert_eq!(b.channel, Channel::main());
    assert_eq!(b.created_at.as_deref(), Some("2026-06-12T12:15:16.000Z"));
    assert_eq!(b.response_timeout, None);
    assert!(b.headers.is_empty());
    assert_eq!(b.kind, CommandKind::SessionTermination);
}

#[test]
fn openapi_poll_example_decodes() {
    let doc = parse(OPENAPI);
    // Re-serialize the example from the raw document bytes rather than by hand.
    let example = doc.path(&[
        "paths",
        "/v1/tunnels/{tunnel_id}/poll",
        "get",
        "responses",
        "200",
        "content",
        "application/json",
        "example",
    ]);
    let mut bytes = Vec::new();
    write_value(example, &mut bytes);
    let decoded = decode_poll(&bytes, &PollLimits::default()).unwrap();
    let [Decoded::Command(a), Decoded::Command(b)] = &decoded[..] else {
        panic!("{decoded:?}");
    };
    assert_eq!(a.response_timeout, Some(Duration::from_secs(30)));
    assert_eq!(a.header("mcp-session-id"), Some("session_123"));
    assert!(matches!(a.kind, CommandKind::JsonRpc { .. }));
    assert_eq!(b.kind, CommandKind::SessionTermination);
    assert_eq!(b.request_id, "req_124");
}

fn write_value(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Null => out.extend_from_slice(b"null"),
        V::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        V::Num(n) => out.extend_from_slice(n.as_bytes()),
        V::Str(s) => json::write_string(out, s),
        V::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        V::Obj(m) => {
            out.push(b'{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::write_string(out, k);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

#[test]
fn encoded_notify_post_equals_fixture() {
    let resp_json = raw_member(NOTIFY_FIXTURE, "resp_json");
    let mut out = Vec::new();
    response::encode(
        &ResponsePost {
            request_id: "cmd_fixture_jsonrpc",
            channel: "harpoon",
            resp_json: Some(resp_json),
            resp_headers: &[],
            resp_code: 200,
            resp_type: RespType::JsonrpcNotify,
        },
        &mut out,
    );
    assert_eq!(parse(&out), parse(NOTIFY_FIXTURE));

    // And the relay side reads the fixture back to the same fields.
    let d = response::decode(NOTIFY_FIXTURE, &Limits::default()).unwrap();
    assert_eq!(d.request_id, "cmd_fixture_jsonrpc");
    assert_eq!(d.channel.as_deref(), Some("harpoon"));
    assert_eq!(&NOTIFY_FIXTURE[d.resp_json.unwrap()], resp_json);
    assert!(d.resp_headers.is_empty());
    assert_eq!((d.resp_code, d.resp_type), (200, RespType::JsonrpcNotify));
}

#[test]
fn encoded_poll_equals_fixture() {
    let commands = raw_member(POLL_FIXTURE, "commands");
    let ranges = json::array_elements(commands, &Limits::default()).unwrap();
    let jsonrpc = raw_member(&commands[ranges[0].clone()], "jsonrpc");
    let headers = vec![("x-test".to_string(), vec!["alpha".to_string()])];
    let out_cmds = [
        CommandOut {
            request_id: "cmd_fixture_jsonrpc",
            shard_token: "fixture:jsonrpc",
            command_type: "jsonrpc",
            channel: "harpoon",
            created_at: "2026-06-12T12:13:14.000Z",
            response_timeout: None,
            headers: &headers,
            jsonrpc: Some(jsonrpc),
        },
        CommandOut {
            request_id: "cmd_fixture_session_end",
            shard_token: "fixture:session",
            command_type: "session_termination",
            channel: "main",
            created_at: "2026-06-12T12:15:16.000Z",
            response_timeout: None,
            headers: &[],
            jsonrpc: None,
        },
    ];
    let mut out = Vec::new();
    encode_poll(&out_cmds, &mut out);
    assert_eq!(parse(&out), parse(POLL_FIXTURE));
}

fn required(schema: &V) -> Vec<String> {
    match schema {
        V::Obj(m) => m
            .get("required")
            .map(|r| r.strings().into_iter().map(str::to_owned).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[test]
fn encoded_bodies_carry_every_required_field_and_nothing_unknown() {
    let mut body = Vec::new();
    for (resp_json, rt) in [
        (
            Some(&br#"{"jsonrpc":"2.0","id":1,"result":{}}"#[..]),
            RespType::JsonrpcResponse,
        ),
        (None, RespType::NotifyAck),
        (None, RespType::SessionTerminationResponse),
    ] {
        response::encode(
            &ResponsePost {
                request_id: "r",
                channel: "main",
                resp_json,
                resp_headers: &[("Content-Type".into(), vec!["application/json".into()])],
                resp_code: 200,
                resp_type: rt,
            },
            &mut body,
        );
        let v = parse(&body);
        let s = schema("TunnelResponsePayload");
        for field in required(&s) {
            assert!(v.keys().contains(&field.as_str()), "missing {field}");
        }
        // The schema is closed (additionalProperties: false).
        assert_eq!(s.get("additionalProperties"), &V::Bool(false));
        let allowed = s.get("properties").keys();
        for k in v.keys() {
            assert!(allowed.contains(&k), "{k} not in TunnelResponsePayload");
        }
        let V::Str(t) = v.get("resp_type") else {
            panic!()
        };
        let allowed_types = schema("ResponsePayloadType")
            .get("enum")
            .strings()
            .join(",");
        assert!(allowed_types.split(',').any(|a| a == t), "{t}");
    }

    let headers = vec![("Mcp-Session-Id".to_string(), vec!["s".to_string()])];
    let cmds = [
        CommandOut {
            request_id: "r1",
            shard_token: "s",
            command_type: "jsonrpc",
            channel: "main",
            created_at: "2026-01-01T00:00:00Z",
            response_timeout: Some("30000ms"),
            headers: &headers,
            jsonrpc: Some(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        },
        CommandOut {
            request_id: "r2",
            shard_token: "s",
            command_type: "session_termination",
            channel: "main",
            created_at: "2026-01-01T00:00:00Z",
            response_timeout: None,
            headers: &headers,
            jsonrpc: None,
        },
    ];
    let mut out = Vec::new();
    encode_poll(&cmds, &mut out);
    let v = parse(&out);
    for field in required(&schema("PolledCommandList")) {
        assert!(v.keys().contains(&field.as_str()), "missing {field}");
    }
    let V::Arr(items) = v.get("commands") else {
        panic!()
    };
    for (item, schema_name) in items
        .iter()
        .zip(["JsonRpcPolledCommand", "SessionTerminationPolledCommand"])
    {
        let s = schema(schema_name);
        for field in required(&s) {
            assert!(
                item.keys().contains(&field.as_str()),
                "{schema_name} missing {field}"
            );
        }
        let allowed = s.get("properties").keys();
        for k in item.keys() {
            assert!(allowed.contains(&k), "{k} not in {schema_name}");
        }
        let V::Obj(props) = s.get("properties") else {
            panic!()
        };
        let want_type = props["command_type"].get("const");
        assert_eq!(item.get("command_type"), want_type);
    }
    // The timeout we write matches the schema's pattern `^[0-9]+(?:ns|us|ms|s|m|h)$`.
    let pattern = schema("JsonRpcPolledCommand")
        .path(&["properties", "response_timeout"])
        .clone();
    assert!(format!("{pattern:?}").contains("^[0-9]+(?:ns|us|ms|s|m|h)$"));
}

#[test]
fn tunnel_failure_values_match_the_published_lists() {
    let s = schema("TunnelResponsePayload");
    let fs = s.path(&["properties", "resp_json", "x-tunnel-failure-schema"]);
    let sources = fs
        .path(&["properties", "source", "x-known-values"])
        .strings();
    let kinds = fs
        .path(&["properties", "transport_error_kind", "x-known-values"])
        .strings();
    use FailureSource as S;
    let ours: Vec<&str> = [
        S::TargetHttp,
        S::Dns,
        S::Tls,
        S::Connect,
        S::TransportClosed,
        S::Timeout,
        S::Protocol,
        S::ClientInternal,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    assert_eq!(ours, sources);
    for k in &kinds {
        let mut out = Vec::new();
        // Every published kind is one we can emit (as_str is the only writer).
        let found = all_kinds().into_iter().find(|ours| ours.as_str() == *k);
        assert!(found.is_some(), "kind {k} missing");
        write_error(
            Some(b"1"),
            &TunnelFailure::protocol(found.unwrap()),
            &mut out,
        );
        let v = parse(&out);
        let tf = v.path(&["error", "data", "tunnel_failure"]);
        for field in required(fs) {
            assert!(tf.keys().contains(&field.as_str()), "missing {field}");
        }
    }
    assert_eq!(all_kinds().len(), kinds.len());

    // The if/then invariants of the schema, checked on what we write.
    let mut out = Vec::new();
    write_error(Some(b"\"a\""), &TunnelFailure::target_http(503), &mut out);
    let v = parse(&out);
    let tf = v.path(&["error", "data", "tunnel_failure"]);
    assert_eq!(tf.get("upstream_response_received"), &V::Bool(true));
    assert_eq!(tf.get("upstream_status"), &V::Num("503".into()));
    assert_eq!(v.path(&["error", "code"]), &V::Num("-32603".into()));
    assert_eq!(v.get("id"), &V::Str("a".into()));
    out.clear();
    write_error(
        None,
        &TunnelFailure::new(S::TransportClosed, Some(TransportErrorKind::Eof)),
        &mut out,
    );
    let v = parse(&out);
    let tf = v.path(&["error", "data", "tunnel_failure"]);
    assert_eq!(tf.get("upstream_response_received"), &V::Bool(false));
    assert!(!tf.keys().contains(&"upstream_status"));
}

fn all_kinds() -> Vec<TransportErrorKind> {
    TransportErrorKind::ALL.to_vec()
}

#[test]
fn server_info_matches_the_documented_example() {
    let doc = parse(OPENAPI);
    let V::Arr(params) = doc.path(&["paths", "/v1/tunnels/{tunnel_id}/poll", "get", "parameters"])
    else {
        panic!()
    };
    let header = params
        .iter()
        .find(|p| p.get("name") == &V::Str("X-Tunnel-MCP-Server-Info".into()))
        .expect("documented header");
    let V::Str(example) = header.path(&["examples", "stdio-and-harpoon", "value"]) else {
        panic!()
    };
    let decls = vec![
        ChannelDecl {
            name: Channel::main(),
            proc_affinity: true,
        },
        ChannelDecl {
            name: Channel::parse("harpoon").unwrap(),
            proc_affinity: true,
        },
    ];
    assert_eq!(&server_info::encode(&decls).unwrap(), example);
    assert_eq!(server_info::decode(example).unwrap(), decls);
}
