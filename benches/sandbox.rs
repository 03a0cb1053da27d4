//! Tool invocation cost, in process (no HTTP): `Sandbox::invoke` of the `echo` example tool end
//! to end (tool access, input schema, tenant permit, a fresh Store and instance, the run, output
//! parsing, the audit record), against the bare component path on an engine configured the same
//! way (a Store, `CommandPre::instantiate_async`, `wasi:cli/run`), so the difference is what
//! behalf adds around the sandbox. Target: invoke echo in under 100 µs median.
//!
//! The sidecar is opened on the shipped `policies/` with a throw-away state directory; the
//! audit log is written and fsynced (by its flusher thread, every 100 ms) as in production.
//!
//! `cargo bench --bench sandbox`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use behalf::principal::Principal;
use behalf::sandbox;
use behalf::serve::{Options, Sidecar};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

const INPUT: &[u8] = br#"{"hello":"world"}"#;
const OUTPUT: &[u8] = br#"{"echo":{"hello":"world"}}"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The same multi-threaded runtime `behalf serve` uses.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` `iters` times inside one `block_on`, timing the whole loop (what criterion's
/// `to_async` does; its async feature is not enabled here).
fn time_async<F, Fut>(rt: &Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime();
    let sidecar = rt.block_on(async {
        Sidecar::open(&Options {
            policies: repo().join("policies"),
            state: Some(tmp.path().join("state")),
            connect_to: Vec::new(),
            shadow: None,
        })
        .expect("the shipped policies open")
    });
    // The sandbox sizes its engine's pool by the largest memory limit of the installed tools.
    let max_memory = sidecar
        .sandbox
        .tools()
        .manifests()
        .map(|m| m.limits.memory)
        .max()
        .unwrap();
    invoke(c, &rt, &sidecar);
    drop(sidecar);
    bare(c, &rt, max_memory);
}

fn invoke(c: &mut Criterion, rt: &Runtime, sidecar: &Sidecar) {
    let sandbox = sidecar.sandbox.clone();
    let alice = Principal::parse("acme", "alice", &["engineering"]).unwrap();

    // Correctness first: the benchmarked call really runs the tool and returns its output.
    let first = rt.block_on(sandbox.invoke(&alice, "echo", INPUT));
    let output = first.result.expect("echo succeeds");
    assert_eq!(serde_json::to_vec(&output).unwrap(), OUTPUT);

    let mut g = c.benchmark_group("sandbox");
    g.bench_function("invoke_echo", |b| {
        b.iter_custom(|iters| {
            time_async(rt, iters, || async {
                let inv = sandbox
                    .invoke(black_box(&alice), "echo", black_box(INPUT))
                    .await;
                assert!(inv.result.is_ok());
                black_box(inv);
            })
        })
    });
    g.finish();

    // Every call above left one audit record; they must all have been written.
    let written = sidecar.egress.audit().head_seq();
    assert!(written > 1, "the audit log recorded the invocations");
}

/// The Store data of the bare path: WASI only (echo imports no `wasi:http`).
struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn bare_store(engine: &Engine, stdout: &MemoryOutputPipe) -> Store<Bare> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(MemoryInputPipe::new(INPUT.to_vec()))
        .stdout(stdout.clone())
        .env("BEHALF_TOOL", "echo")
        .env("BEHALF_INVOCATION", "0123456789abcdef0123456789abcdef");
    let mut store = Store::new(
        engine,
        Bare {
            wasi: wasi.build(),
            table: ResourceTable::new(),
        },
    );
    // The engine interrupts on epochs; nothing ticks this one, so any deadline > 0 never hits.
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// The bare component path on an engine built as the sandbox builds its own.
fn bare(c: &mut Criterion, rt: &Runtime, max_memory: u64) {
    let engine = sandbox::engine(max_memory).unwrap();
    let component = Component::from_file(&engine, echo_wasm()).unwrap();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let pre = CommandPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();

    let run_once = || async {
        let stdout = MemoryOutputPipe::new(64 << 10);
        let mut store = bare_store(&engine, &stdout);
        let command = pre.instantiate_async(&mut store).await.unwrap();
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await
            .unwrap()
            .unwrap();
        drop(store);
        stdout.contents()
    };
    let out = rt.block_on(run_once());
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(serde_json::to_vec(&out).unwrap(), OUTPUT);

    let mut g = c.benchmark_group("sandbox");
    g.bench_function("bare_echo", |b| {
        b.iter_custom(|iters| {
            time_async(rt, iters, || async {
                black_box(run_once().await);
            })
        })
    });

    g.bench_function("bare_instantiate", |b| {
        b.iter_custom(|iters| {
            time_async(rt, iters, || async {
                let stdout = MemoryOutputPipe::new(64 << 10);
                let mut store = bare_store(&engine, &stdout);
                let command = pre.instantiate_async(&mut store).await.unwrap();
                black_box(command);
            })
        })
    });
    g.finish();
}

fn echo_wasm() -> PathBuf {
    repo().join("fixtures/tools/echo/echo.wasm")
}

criterion_group!(benches, bench);
criterion_main!(benches);
