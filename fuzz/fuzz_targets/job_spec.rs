//! A `JobSpec` as the wire gives it (prost) through the public part of what a submit checks
//! without a server: `stylefarm_convert::settings_from_proto` (which runs
//! `RenderSettings::validate`), and the settings going back to the wire and in again
//! unchanged. The coordinator's own checks of the rest of the spec (names, blobs, images, the
//! plan) are crate-private: the `requests` target sends specs through `SubmitJob` and
//! `PlanJob` for those.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use stylefarm_convert::{settings_from_proto, settings_to_proto};
use stylefarm_proto::v1;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = v1::JobSpec::decode(data) else {
        return;
    };
    // What the wire decoded re-encodes to bytes that decode to the same message (compared as
    // bytes: a NaN weight is not equal to itself).
    let bytes = spec.encode_to_vec();
    let again = v1::JobSpec::decode(bytes.as_slice()).expect("a re-encoded JobSpec decodes");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "a JobSpec changed going through the wire twice"
    );

    let num_styles = spec.styles.len();
    let wire = spec.settings.clone().unwrap_or_default();
    let Ok(settings) = settings_from_proto(&wire, num_styles, "spec.settings") else {
        return;
    };
    settings
        .validate(num_styles)
        .expect("settings that settings_from_proto accepted validate");
    // The coordinator stores and sends tasks the settings in their wire form: they must come
    // back the same and still valid (workers check them again).
    let back = settings_from_proto(&settings_to_proto(&settings), num_styles, "spec.settings")
        .expect("accepted settings are accepted again after settings_to_proto");
    assert_eq!(
        back, settings,
        "settings changed going to the wire and back"
    );
});
