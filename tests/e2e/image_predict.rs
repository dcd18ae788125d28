//! Predict requests with images, as base64 in JSON or as multipart files: every input
//! is checked as uploads are (a PNG or JPEG by its bytes, within bounds, decodable)
//! before any model runs, and an error names the input at fault.

use base64::Engine;
use serde_json::json;

use crate::image_files::png;
use crate::support::TestServer;

const PATH: &str = "/v1/models/ft:efficientnet-lite0:none:0/predict";

fn file(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned())
}

#[tokio::test]
async fn image_inputs_are_checked_and_the_one_at_fault_is_named() {
    let s = TestServer::start().await;
    let good = base64::engine::general_purpose::STANDARD.encode(png(10));
    let refusals = [
        (
            json!({"inputs": [{"image": good}, {"image": "not base64!"}]}),
            "inputs[1]",
            "invalid_base64",
        ),
        (
            json!({"inputs": [{"image": good}, {"image": base64::engine::general_purpose::STANDARD.encode(b"GIF89a....")}]}),
            "inputs[1]",
            "invalid_image",
        ),
        (
            json!({"inputs": [{"image": good}, "a text"]}),
            "inputs[1]",
            "mixed_inputs",
        ),
    ];
    for (body, param, code) in refusals {
        let (status, err) = s.post_json(PATH, &body).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }

    let form = reqwest::multipart::Form::new()
        .part("image", file(png(1), "a.png"))
        .part("image", file(b"plain text".to_vec(), "b.png"));
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs[1]", "{err}");
    assert_eq!(err["error"]["code"], "invalid_image", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("input 1:")),
        "{err}"
    );

    let form = reqwest::multipart::Form::new().part("file", file(png(1), "a.png"));
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "file", "{err}");

    let form = reqwest::multipart::Form::new().text("note", "");
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 400, "{err}");

    // Well-formed images reach the model lookup: this model does not exist.
    let form = reqwest::multipart::Form::new().part("image", file(png(1), "a.png"));
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = s
        .post_json(PATH, &json!({"inputs": [{"image": good}]}))
        .await;
    assert_eq!(status, 404, "{err}");
}
