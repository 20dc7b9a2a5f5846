//! `cargo bench --bench routing`: one direct message routed through the core
//! (no sockets, no parsing), and one group message fanned out to 30 members.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use vivachat::core::{ChatCore, ConnId, CoreConfig, MemoryStructures};
use vivachat::names::Name;
use vivachat::protocol::parse_request;

fn routing(c: &mut Criterion) {
    let mut core: ChatCore<MemoryStructures<ConnId>> =
        ChatCore::new(MemoryStructures::default(), CoreConfig::default());
    let users: Vec<Name> = (0..1000)
        .map(|i| Name::parse(&format!("user{i}")).unwrap())
        .collect();
    for (i, u) in users.iter().enumerate() {
        core.connect(u, i as ConnId).unwrap();
    }
    for u in users.iter().take(30) {
        let join = parse_request(r#"{"type":"group_join","group":"class"}"#).unwrap();
        core.handle(u, &0, join, 0).unwrap();
    }
    let direct = parse_request(r#"{"type":"message","to":"user1","text":"hello there"}"#).unwrap();
    let group =
        parse_request(r#"{"type":"group_message","group":"class","text":"hello all"}"#).unwrap();
    c.bench_function("route one direct message (1,000 online)", |b| {
        b.iter(|| black_box(core.handle(&users[0], &0, direct.clone(), 0).unwrap()))
    });
    c.bench_function("fan out one group message to 30 members", |b| {
        b.iter(|| black_box(core.handle(&users[0], &0, group.clone(), 0).unwrap()))
    });
    c.bench_function("parse one message request", |b| {
        b.iter(|| {
            black_box(parse_request(black_box(
                r#"{"type":"message","to":"user1","text":"hello there"}"#,
            )))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = routing
}
criterion_main!(benches);
