//! Predict requests with images, as base64 in JSON or as multipart files: the request's
//! shape is checked, then the model looked up (404 before anything is decoded), then
//! every input checked as uploads are (a PNG or JPEG by its bytes, within bounds,
//! decodable) before the model runs, and an error names the input at fault.

use base64::Engine;
use serde_json::json;

use crate::image_files::png;
use crate::support::TestServer;

const PATH: &str = "/v1/models/ft:efficientnet-lite0:none:0/predict";

fn file(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned())
}

#[tokio::test]
async fn requests_of_the_wrong_shape_are_400_and_an_unknown_model_404_before_decoding() {
    let s = TestServer::start().await;
    let good = base64::engine::general_purpose::STANDARD.encode(png(10));
    // The request's shape is checked first: nothing to decode for that.
    let (status, err) = s
        .post_json(PATH, &json!({"inputs": [{"image": good}, "a text"]}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs[1]", "{err}");
    assert_eq!(err["error"]["code"], "mixed_inputs", "{err}");
    let form = reqwest::multipart::Form::new().part("file", file(png(1), "a.png"));
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "file", "{err}");
    let form = reqwest::multipart::Form::new().text("note", "");
    let (status, err) = s.post_form(PATH, form).await;
    assert_eq!(status, 400, "{err}");

    // Then the model: this one does not exist, so no image is decoded, good or bad
    // (tests/e2e/images.rs checks the images of a request to a real model).
    for body in [
        json!({"inputs": [{"image": good}]}),
        json!({"inputs": [{"image": good}, {"image": "not base64!"}]}),
        json!({"inputs": [{"image": base64::engine::general_purpose::STANDARD.encode(b"GIF89a....")}]}),
    ] {
        let (status, err) = s.post_json(PATH, &body).await;
        assert_eq!(status, 404, "{err}");
    }
    for bytes in [png(1), b"plain text".to_vec()] {
        let form = reqwest::multipart::Form::new().part("image", file(bytes, "a.png"));
        let (status, err) = s.post_form(PATH, form).await;
        assert_eq!(status, 404, "{err}");
    }
}

/// The checks of image inputs sent to a real image model at `path`: each names the
/// input at fault; an image over predict's pixel cap (16 MP by default, where uploads
/// take 40 MP) is refused.
pub async fn image_inputs_are_checked_and_the_one_at_fault_is_named(s: &TestServer, path: &str) {
    let good = base64::engine::general_purpose::STANDARD.encode(png(10));
    // A PNG whose header is whole and whose pixels are cut off: it passes the API's
    // checks and is refused, by its index, by the inference thread that decodes it.
    let cut = {
        let mut bytes = png(10);
        bytes.truncate(bytes.len() / 2);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let refusals = [
        (
            json!({"inputs": [{"image": good}, {"image": cut}]}),
            "inputs[1]",
            "invalid_image",
        ),
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
    ];
    for (body, param, code) in refusals {
        let (status, err) = s.post_json(path, &body).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }

    let form = reqwest::multipart::Form::new()
        .part("image", file(png(1), "a.png"))
        .part("image", file(b"plain text".to_vec(), "b.png"));
    let (status, err) = s.post_form(path, form).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs[1]", "{err}");
    assert_eq!(err["error"]["code"], "invalid_image", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("input 1:")),
        "{err}"
    );

    // 4,100 × 4,000 = 16.4 MP: within the upload cap, over predict's.
    let large = {
        let pixels = image::RgbImage::new(4_100, 4_000);
        let mut out = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            &pixels,
            4_100,
            4_000,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode png");
        out
    };
    let form = reqwest::multipart::Form::new().part("image", file(large, "large.png"));
    let (status, err) = s.post_form(path, form).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs[0]", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("16000000 pixels")),
        "{err}"
    );
}
