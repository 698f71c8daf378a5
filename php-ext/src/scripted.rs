//! Scripted stand-ins for lockd in unit tests: a server on a loopback port that answers
//! `hello` (with the result a test gives, e.g. one offering a cluster session), then plays a
//! script, one step per request read, and closes: a script that ends right after reading a
//! request is a node that dies while the client waits for that reply.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;

use pklock_proto::frame;
use serde_json::{json, Value};

/// What a step answers to the request it read: the frames to write.
pub type Step = Box<dyn FnOnce(&Value) -> Vec<Value> + Send>;

/// A step that writes `replies`, whatever the request.
pub fn replies(replies: Vec<Value>) -> Step {
    Box::new(move |_| replies)
}

/// A step that answers the request with `result`, under the request's own id.
pub fn result(result: Value) -> Step {
    Box::new(move |request| vec![json!({"id": request["id"], "result": result})])
}

/// A step that answers the request with the error `code`.
pub fn error(code: &'static str) -> Step {
    Box::new(move |request| vec![json!({"id": request["id"], "error": {"code": code, "message": code}})])
}

/// `hello`'s result from a single lockd.
pub fn single_hello() -> Value {
    json!({"protocol": 1, "server": "fake", "version": "0", "connection": 7, "features": []})
}

/// `hello`'s result from a cluster node, offering the session `id`.
pub fn cluster_hello(id: &str, ttl: f64) -> Value {
    let mut hello = single_hello();
    hello["session"] = json!({"id": id, "secret": "5e".repeat(32), "ttl": ttl});
    hello
}

/// Serves one connection on `listener`: `hello`, then `script`. The thread returns every
/// request read after `hello`.
pub fn serve_on(listener: TcpListener, hello: Value, script: Vec<Step>) -> thread::JoinHandle<Vec<Value>> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let mut payload = Vec::new();
        let mut read = |stream: &mut TcpStream| {
            frame::read_frame(stream, 1 << 20, &mut payload).unwrap();
            serde_json::from_slice::<Value>(&payload).unwrap()
        };
        let request = read(&mut stream);
        assert_eq!(request["command"], "hello");
        frame::write_frame(&mut stream, &json!({"id": request["id"], "result": hello})).unwrap();
        for step in script {
            let request = read(&mut stream);
            for reply in step(&request) {
                frame::write_frame(&mut stream, &reply).unwrap();
            }
            seen.push(request);
        }
        stream.flush().unwrap();
        seen
    })
}

/// [`serve_on`] a fresh port; returns the port.
pub fn serve(hello: Value, script: Vec<Step>) -> (u16, thread::JoinHandle<Vec<Value>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, serve_on(listener, hello, script))
}

/// A loopback port nothing listens on (now).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
