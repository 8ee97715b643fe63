//! Blame rules on stacks recorded from real targets (labels as lagtrace
//! wrote them in `--spans` files), one runtime each.
use std::collections::HashMap;

use super::*;

fn frames(labels: &[&str]) -> Vec<Frame> {
    labels.iter().map(|l| Frame::parse(l)).collect()
}

/// Python frames carry the full path of their code object's file.
fn with_paths(mut frames: Vec<Frame>, paths: &HashMap<String, String>) -> Vec<Frame> {
    for f in &mut frames {
        if let Some(full) = f.file.as_ref().and_then(|x| paths.get(x)) {
            f.file = Some(full.clone());
        }
    }
    frames
}

fn blamer<'a>(rules: &'a Rules, _: &HashMap<String, String>) -> &'a Rules {
    rules
}

/// aiohttp, `await resp.json()` on a 15 MB body (site-packages known by path).
#[test]
fn aiohttp_json_decode_blames_the_handler() {
    let stack = frames(&[
        "<module> (srv/frontend.py:40)",
        "run_app (aiohttp/web.py:526)",
        "BaseEventLoop.run_forever (asyncio/base_events.py:641)",
        "Handle._run (asyncio/events.py:88)",
        "RequestHandler._handle_request (aiohttp/web_protocol.py:577)",
        "catalog_handler (srv/frontend.py:23)",
        "load_catalog (srv/frontend.py:18)",
        "ClientResponse.json (aiohttp/client_reqrep.py:1281)",
        "loads (json/__init__.py:346)",
        "JSONDecoder.decode (json/decoder.py:337)",
        "JSONDecoder.raw_decode (json/decoder.py:353)",
        "_PyEval_EvalFrameDefault (Python/ceval.c:4200)",
    ]);
    let paths: HashMap<String, String> = [
        ("srv/frontend.py", "/srv/frontend.py"),
        (
            "aiohttp/web.py",
            "/venv/lib/python3.12/site-packages/aiohttp/web.py",
        ),
        (
            "aiohttp/web_protocol.py",
            "/venv/lib/python3.12/site-packages/aiohttp/web_protocol.py",
        ),
        (
            "aiohttp/client_reqrep.py",
            "/venv/lib/python3.12/site-packages/aiohttp/client_reqrep.py",
        ),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut stack = with_paths(stack, &paths);
    // A statically linked interpreter: its C frames (here the _json
    // scanner) are in the executable.
    let scanner = Frame::native(
        "scan_once_unicode",
        Some("Modules/_json.c".into()),
        Some(1046),
        Some("/root/.pyenv/versions/3.12.1/bin/python3.12".into()),
    );
    stack.push(scanner);
    let rules = Rules::default();
    let b = blamer(&rules, &paths).blame(&stack).unwrap();
    assert_eq!(b.frame.function, "load_catalog");
    assert_eq!(b.via.as_deref(), Some("aiohttp"));
    // The interpreter's own frames are not the leaf: the Python code is.
    assert_eq!(
        describe(&b),
        "load_catalog (frontend.py:18) → json.raw_decode"
    );
    assert_eq!(group_key(&b.frame), "load_catalog (frontend.py)");
}

/// FastAPI handler calling `requests.get`: blocked in the kernel under
/// the stdlib socket, under requests, under the handler.
#[test]
fn sync_requests_in_async_handler_blames_the_handler_via_requests() {
    let stack = frames(&[
        "run (uvicorn/server.py:68)",
        "run_asgi (uvicorn/protocols/http/httptools_impl.py:399)",
        "stock (app/app.py:46)",
        "get (requests/api.py:73)",
        "Session.send (requests/sessions.py:703)",
        "SocketIO.readinto (python3.12/socket.py:707)",
        "__libc_recv (linux/recv.c:28)",
        "entry_SYSCALL_64_[k]",
        "__x64_sys_recvfrom_[k]",
    ]);
    let paths: HashMap<String, String> = [
        ("app/app.py", "/home/u/app/app.py"),
        (
            "requests/api.py",
            "/usr/lib/python3/dist-packages/requests/api.py",
        ),
        (
            "requests/sessions.py",
            "/usr/lib/python3/dist-packages/requests/sessions.py",
        ),
        ("python3.12/socket.py", "/usr/lib/python3.12/socket.py"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let stack = with_paths(stack, &paths);
    let rules = Rules::default();
    let bl = blamer(&rules, &paths);
    // uvicorn frames are not known to be site-packages here; still the
    // innermost user frame is the handler.
    let b = bl.blame(&stack).unwrap();
    assert_eq!(display(&b.frame), "stock (app.py:46)");
    assert_eq!(b.via.as_deref(), Some("requests"));
    assert_eq!(
        b.leaf.as_ref().map(display_leaf).as_deref(),
        Some("socket.readinto")
    );
    // `--app-prefix` overrides: only /home/u/app is the user's.
    let only = Rules {
        app_prefixes: vec!["/nowhere".into()],
    };
    assert!(blamer(&only, &paths).blame(&stack).is_none());
}

/// Node with `--perf-basic-prof`: JS frames from the perf map, V8 and
/// libc underneath.
#[test]
fn node_blames_the_js_function_not_v8() {
    let mut stack = frames(&[
        "node::Start(int, char**)",
        "Builtins_JSEntry",
        "JS:~processTicksAndRejections node:internal/process/task_queues:67",
        "LazyCompile:*buildReport /srv/app/server.js:12",
        "LazyCompile:*serialize /srv/app/node_modules/fast-json/index.js:3",
        "Builtins_JsonStringify",
        "v8::internal::JsonStringifier::SerializeString(v8::internal::Handle<v8::internal::String>)",
        "__memmove_avx_unaligned_erms (x86_64/multiarch/memmove-vec-unaligned-erms.S:497)",
    ]);
    // Perf-map names are JIT frames (their labels do not say so).
    for f in &mut stack[2..5] {
        *f = Frame::jit(f.function.clone());
    }
    stack[5] = Frame::jit("Builtin:JsonStringify");
    stack[0].module = Some("/usr/bin/node".into());
    stack[6].module = Some("/usr/bin/node".into());
    stack[7].module = Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
    let (rules, paths) = (Rules::default(), HashMap::new());
    let b = blamer(&rules, &paths).blame(&stack).unwrap();
    assert_eq!(b.frame.kind, FrameKind::Js);
    assert!(b.frame.function.contains("buildReport"), "{b:?}");
    assert_eq!(
        short_function(&stack[6].function),
        "v8::internal::JsonStringifier::SerializeString"
    );
}

/// Node without flags: JS frames read from V8's frames. A function
/// without a script (a promise job's JS part) is V8's, not the app's.
#[test]
fn node_v8_frames_blame_the_app_function() {
    let v8 = |name: &str, file: Option<&str>| Frame {
        kind: FrameKind::Js,
        function: name.into(),
        file: file.map(Into::into),
        line: Some(3),
        module: Some(crate::symbolize::v8::V8_MODULE.into()),
        offset: None,
        inlined: false,
    };
    let mut stack = frames(&["node::Start(int, char**)", "Builtins_JSEntry"]);
    stack.extend([
        v8("emit", Some("node:events")),
        v8("buildReport", Some("/srv/app/server.js")),
        v8(
            "serialize",
            Some("/srv/app/node_modules/fast-json/index.js"),
        ),
        v8("(anonymous)", None),
    ]);
    let (rules, paths) = (Rules::default(), HashMap::new());
    let b = blamer(&rules, &paths).blame(&stack).unwrap();
    assert_eq!(b.frame.function, "buildReport", "{b:?}");
}

/// tokio binary with frame pointers, sleeping in a named function.
#[test]
fn tokio_blames_the_handler_not_libc() {
    let stack = frames(&[
        "std::rt::lang_start_internal",
        "tokio::runtime::scheduler::multi_thread::worker::Context::run_task (src/runtime/scheduler/multi_thread/worker.rs:595)",
        "<core::pin::Pin<P> as core::future::future::Future>::poll (future/future.rs:123)",
        "sleeper::slow_handler::{{closure}} (src/main.rs:21)",
        "std::thread::sleep (std/src/thread/mod.rs:880)",
        "std::sys::pal::unix::thread::Thread::sleep (unix/thread.rs:242)",
        "__GI___clock_nanosleep (linux/clock_nanosleep.c:48)",
        "__x64_sys_clock_nanosleep_[k]",
    ]);
    let (rules, paths) = (Rules::default(), HashMap::new());
    let b = blamer(&rules, &paths).blame(&stack).unwrap();
    assert_eq!(b.frame.function, "sleeper::slow_handler::{{closure}}");
    assert_eq!(b.via.as_deref(), Some("std"));
    assert_eq!(
        short_function("<core::pin::Pin<P> as core::future::future::Future>::poll"),
        "<core::pin::Pin as core::future::future::Future>::poll"
    );
    assert_eq!(short_function("app::work::h0123456789abcdef"), "app::work");
}

/// A C loop: the program's function, not libc's.
#[test]
fn c_blames_the_program_function() {
    let mut stack = frames(&[
        "main (tests/c_epoll_loop.c:80)",
        "handle_request (tests/c_epoll_loop.c:44)",
        "usleep (misc/usleep.c:31)",
        "__GI___clock_nanosleep (linux/clock_nanosleep.c:48)",
        "[unknown] (libc.so.6+0x1234)",
    ]);
    stack[2].module = Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
    let (rules, paths) = (Rules::default(), HashMap::new());
    let b = blamer(&rules, &paths).blame(&stack).unwrap();
    assert_eq!(display(&b.frame), "handle_request (c_epoll_loop.c:44)");
    assert_eq!(b.via.as_deref(), Some("libc.so.6"));
    assert_eq!(
        b.leaf.as_ref().map(display_leaf).as_deref(),
        Some("__GI___clock_nanosleep")
    );
}

/// Stdlib Python known only by `dir/file.py`, and markers and the kernel.
#[test]
fn stdlib_by_short_path_and_nothing_user() {
    let stack = frames(&[
        "[off-cpu]",
        "BaseEventLoop.run_forever (asyncio/base_events.py:641)",
        "EpollSelector.select (python3.12/selectors.py:468)",
        "do_epoll_wait_[k]",
    ]);
    let (rules, paths) = (Rules::default(), HashMap::new());
    assert!(blamer(&rules, &paths).blame(&stack).is_none());
    assert!(!blamer(&rules, &paths).is_user(&Frame::parse("x (json/decoder.py:1)")));
    let frozen = Frame::python("y", "<frozen importlib._bootstrap>", Some(5));
    assert!(!blamer(&rules, &paths).is_user(&frozen));
    assert!(blamer(&rules, &paths).is_user(&Frame::parse("z (myapp/json.py:1)")));
}

#[test]
fn labels_round_trip() {
    for l in [
        "load_catalog (srv/frontend.py:18)",
        "__x64_sys_recvfrom_[k]",
        "[off-cpu]",
        "[unknown] (libc.so.6+0x1a2b)",
        "[unknown] 0x7f0012",
        "v8::internal::Foo(int)",
        "foo (x.c)",
    ] {
        assert_eq!(Frame::parse(l).label(), l);
    }
}
