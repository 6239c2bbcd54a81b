//! The Open Inference Protocol (v2) codec: the spec's JSON examples, every
//! datatype, and bad input.

use mlops_core::Result;
use mlops_core::inference::{
    Datatype, InferenceRequest, InferenceResponse, ParameterValue, Tensor, TensorData,
};
use mlops_serve::codec;
use serde_json::json;

fn from_json(body: &[u8]) -> Result<InferenceRequest> {
    codec::decode_request(body, None)
}

fn to_json(request: &InferenceRequest) -> Vec<u8> {
    codec::encode_request(request, |_| false).unwrap().0
}

fn to_value(request: &InferenceRequest) -> serde_json::Value {
    serde_json::from_slice(&to_json(request)).unwrap()
}

fn response_from_json(body: &[u8]) -> Result<InferenceResponse> {
    codec::decode_response(body, None)
}

fn response_to_json(response: &InferenceResponse) -> Vec<u8> {
    codec::encode_response(response, |_| false).unwrap().0
}

fn decode_err(body: serde_json::Value) -> String {
    let bytes = serde_json::to_vec(&body).unwrap();
    match from_json(&bytes) {
        Ok(r) => panic!("expected an error, decoded {r:?}"),
        Err(e) => {
            assert!(matches!(e, mlops_core::Error::InvalidInput { .. }), "{e:?}");
            e.to_string()
        }
    }
}

fn one_input(
    name: &str,
    shape: serde_json::Value,
    datatype: &str,
    data: serde_json::Value,
) -> serde_json::Value {
    json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
}

/// The request example of the spec, verbatim. Its second input declares shape [3] but
/// carries one element: the spec's own example is inconsistent, and a decoder must say so
/// rather than guess.
const SPEC_REQUEST: &str = r#"{
  "id" : "42",
  "inputs" : [
    {
      "name" : "input0",
      "shape" : [ 2, 2 ],
      "datatype" : "UINT32",
      "data" : [ 1, 2, 3, 4 ]
    },
    {
      "name" : "input1",
      "shape" : [ 3 ],
      "datatype" : "BOOL",
      "data" : [ true ]
    }
  ],
  "outputs" : [
    {
      "name" : "output0"
    }
  ]
}"#;

#[test]
fn spec_request_example_is_checked_against_its_shape() {
    let err = from_json(SPEC_REQUEST.as_bytes()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("input 'input1'"), "{msg}");
    assert!(
        msg.contains("shape [3] holds 3 elements but data has 1"),
        "{msg}"
    );
}

#[test]
fn spec_request_example_with_consistent_shape_round_trips() {
    let fixed = SPEC_REQUEST.replace("\"shape\" : [ 3 ]", "\"shape\" : [ 1 ]");
    let req = from_json(fixed.as_bytes()).unwrap();
    assert_eq!(req.id.as_deref(), Some("42"));
    assert_eq!(req.inputs.len(), 2);
    let input0 = req.input("input0").unwrap();
    assert_eq!(input0.shape[..], [2, 2]);
    assert_eq!(input0.data, TensorData::Uint32(vec![1, 2, 3, 4]));
    assert_eq!(
        req.input("input1").unwrap().data,
        TensorData::Bool(vec![true])
    );
    assert_eq!(req.outputs.as_ref().unwrap()[0].name, "output0");

    let json = to_value(&req);
    assert_eq!(
        json,
        json!({
            "id": "42",
            "inputs": [
                {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
                {"name": "input1", "shape": [1], "datatype": "BOOL", "data": [true]}
            ],
            "outputs": [{"name": "output0"}]
        })
    );
    let back = from_json(&to_json(&req)).unwrap();
    assert_eq!(back, req);
}

#[test]
fn spec_response_example_round_trips() {
    // The spec's response example, with the comma it lacks after "id" and the
    // required "model_name" added.
    let body = r#"{
      "model_name" : "mymodel",
      "id" : "42",
      "outputs" : [
        {
          "name" : "output0",
          "shape" : [ 3, 2 ],
          "datatype"  : "FP32",
          "data" : [ 1.0, 1.1, 2.0, 2.1, 3.0, 3.1 ]
        }
      ]
    }"#;
    let resp = response_from_json(body.as_bytes()).unwrap();
    assert_eq!(resp.id.as_deref(), Some("42"));
    assert_eq!(resp.model_version, None);
    let out = resp.output("output0").unwrap();
    assert_eq!(out.shape[..], [3, 2]);
    assert_eq!(
        out.data,
        TensorData::Fp32(vec![1.0, 1.1, 2.0, 2.1, 3.0, 3.1])
    );
    let again = response_from_json(&response_to_json(&resp)).unwrap();
    assert_eq!(again, resp);
    // Without model_name, the response is refused and the message says what is missing.
    let err = response_from_json(br#"{"outputs": []}"#).unwrap_err();
    assert!(err.to_string().contains("model_name"), "{err}");
}

#[test]
fn nested_and_flat_data_decode_alike() {
    let flat = one_input("x", json!([2, 3]), "INT64", json!([1, 2, 3, 4, 5, 6]));
    let nested = one_input("x", json!([2, 3]), "INT64", json!([[1, 2, 3], [4, 5, 6]]));
    let deep = one_input(
        "x",
        json!([2, 3, 1]),
        "INT64",
        json!([[[1], [2], [3]], [[4], [5], [6]]]),
    );
    let a = from_json(&serde_json::to_vec(&flat).unwrap()).unwrap();
    let b = from_json(&serde_json::to_vec(&nested).unwrap()).unwrap();
    let c = from_json(&serde_json::to_vec(&deep).unwrap()).unwrap();
    assert_eq!(a.inputs[0].data, b.inputs[0].data);
    assert_eq!(a.inputs[0].data, c.inputs[0].data);
    assert_eq!(c.inputs[0].shape[..], [2, 3, 1]);
}

#[test]
fn every_datatype_round_trips() {
    let cases: Vec<(&str, serde_json::Value, TensorData)> = vec![
        (
            "BOOL",
            json!([true, false]),
            TensorData::Bool(vec![true, false]),
        ),
        ("UINT8", json!([0, 255]), TensorData::Uint8(vec![0, 255])),
        (
            "UINT16",
            json!([0, 65535]),
            TensorData::Uint16(vec![0, u16::MAX]),
        ),
        (
            "UINT32",
            json!([0, 4294967295u64]),
            TensorData::Uint32(vec![0, u32::MAX]),
        ),
        (
            "UINT64",
            json!([0, u64::MAX]),
            TensorData::Uint64(vec![0, u64::MAX]),
        ),
        (
            "INT8",
            json!([-128, 127]),
            TensorData::Int8(vec![i8::MIN, i8::MAX]),
        ),
        (
            "INT16",
            json!([-32768, 32767]),
            TensorData::Int16(vec![i16::MIN, i16::MAX]),
        ),
        (
            "INT32",
            json!([i32::MIN, i32::MAX]),
            TensorData::Int32(vec![i32::MIN, i32::MAX]),
        ),
        (
            "INT64",
            json!([i64::MIN, i64::MAX]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
        ),
        (
            "FP16",
            json!([-65504.0, 0.5]),
            TensorData::Fp16(vec![-65504.0, 0.5]),
        ),
        ("FP32", json!([1.5, -2]), TensorData::Fp32(vec![1.5, -2.0])),
        (
            "FP64",
            json!([1e300, -0.1]),
            TensorData::Fp64(vec![1e300, -0.1]),
        ),
        (
            "BYTES",
            json!(["abc", "ü"]),
            TensorData::Bytes(vec![b"abc".to_vec(), "ü".as_bytes().to_vec()]),
        ),
    ];
    assert_eq!(cases.len(), Datatype::ALL.len());
    for (datatype, data, expected) in cases {
        let body = one_input("t", json!([2]), datatype, data);
        let req = from_json(&serde_json::to_vec(&body).unwrap())
            .unwrap_or_else(|e| panic!("{datatype}: {e}"));
        let t = &req.inputs[0];
        assert_eq!(t.data, expected, "{datatype}");
        assert_eq!(t.datatype().as_str(), datatype);
        assert_eq!(datatype.parse::<Datatype>().unwrap(), t.datatype());
        let back = from_json(&to_json(&req)).unwrap();
        assert_eq!(back, req, "{datatype}");
    }
}

#[test]
fn elements_that_do_not_fit_the_datatype_are_rejected() {
    let cases = [
        (
            "UINT8",
            json!([1, 300]),
            "element 1 (300) is out of range for UINT8",
        ),
        (
            "UINT32",
            json!([-1, 0]),
            "element 0 (-1) is out of range for UINT32",
        ),
        (
            "INT8",
            json!([0, -129]),
            "element 1 (-129) is out of range for INT8",
        ),
        (
            "INT32",
            json!([1, 1.5]),
            "element 1 is a fractional number (1.5), which is not a valid INT32 value",
        ),
        (
            "FP32",
            json!([1, "2"]),
            "element 1 is a string, which is not a valid FP32 value",
        ),
        (
            "FP32",
            json!([1, null]),
            "element 1 is null, which is not a valid FP32 value",
        ),
        ("FP32", json!([1, 1e39]), "out of range for FP32"),
        (
            "FP16",
            json!([70000, 1]),
            "element 0 (70000) is out of range for FP16",
        ),
        (
            "BOOL",
            json!([1, 0]),
            "element 0 is a number, which is not a valid BOOL value",
        ),
        (
            "BYTES",
            json!([1, 2]),
            "element 0 is a number, which is not a valid BYTES value",
        ),
        ("INT64", json!([{"a": 1}, 2]), "element 0 is an object"),
        ("UINT64", json!([true, 1]), "element 0 is a boolean"),
    ];
    for (datatype, data, expected) in cases {
        let msg = decode_err(one_input("feat", json!([2]), datatype, data));
        assert!(msg.contains("input 'feat'"), "{datatype}: {msg}");
        assert!(msg.contains(expected), "{datatype}: {msg}");
    }
}

#[test]
fn bad_shapes_datatypes_and_structure_are_rejected() {
    let msg = decode_err(one_input("x", json!([2, 2]), "FP32", json!([1, 2, 3])));
    assert!(
        msg.contains("input 'x': shape [2, 2] holds 4 elements but data has 3"),
        "{msg}"
    );
    let msg = decode_err(one_input("x", json!([1]), "FP32", json!([1, 2])));
    assert!(msg.contains("holds 1 elements but data has 2"), "{msg}");
    let msg = decode_err(one_input("x", json!([-1, 2]), "FP32", json!([1, 2])));
    assert!(msg.contains("negative dimension"), "{msg}");
    let msg = decode_err(one_input(
        "x",
        json!([u32::MAX, u32::MAX, u32::MAX]),
        "FP32",
        json!([1]),
    ));
    assert!(msg.contains("input 'x'"), "{msg}");
    let msg = decode_err(one_input("x", json!([2]), "FLOAT32", json!([1, 2])));
    assert!(msg.contains("unknown datatype \"FLOAT32\""), "{msg}");
    let msg = decode_err(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}));
    assert!(msg.contains("input 'x': missing \"data\""), "{msg}");
    let msg = decode_err(json!({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}
    ]}));
    assert!(msg.contains("input 'x' appears more than once"), "{msg}");
    let msg = decode_err(json!({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}));
    assert!(
        msg.contains("output 'y' is requested more than once"),
        "{msg}"
    );
    let msg = decode_err(json!({"id": "1"}));
    assert!(msg.contains("inputs"), "{msg}");
    let msg = decode_err(json!({"inputs": [], "parameters": {"nested": {"a": 1}}}));
    assert!(msg.contains("parameter value"), "{msg}");
    let err = from_json(b"{\"inputs\": [").unwrap_err();
    assert!(matches!(err, mlops_core::Error::InvalidInput { .. }));
}

#[test]
fn parameters_keep_their_types() {
    let body = json!({
        "id": "p",
        "parameters": {"s": "text", "i": -3, "d": 0.25, "b": true},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5],
                    "parameters": {"content_type": "np"}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": false}}]
    });
    let req = from_json(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(req.parameters["s"], ParameterValue::String("text".into()));
    assert_eq!(req.parameters["i"], ParameterValue::Int(-3));
    assert_eq!(req.parameters["d"], ParameterValue::Double(0.25));
    assert_eq!(req.parameters["b"], ParameterValue::Bool(true));
    assert_eq!(
        req.inputs[0].parameters["content_type"],
        ParameterValue::String("np".into())
    );
    assert_eq!(to_value(&req), body);
}

#[test]
fn non_finite_and_non_utf8_outputs_refuse_to_serialize() {
    let nan = Tensor::new("y", vec![2], TensorData::Fp32(vec![1.0, f32::NAN])).unwrap();
    let err = codec::encode_tensors(std::slice::from_ref(&nan))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tensor 'y' element 1 is not finite"), "{err}");
    let bin = Tensor::new("b", vec![1], TensorData::Bytes(vec![vec![0xff, 0xfe]])).unwrap();
    let err = codec::encode_tensors(std::slice::from_ref(&bin))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tensor 'b' element 0 is not UTF-8"), "{err}");
}

#[test]
fn fp64_values_decode_exactly() {
    // Correctly rounded parsing: the shortest representation of an f64 comes back
    // as the same f64 (serde_json's default fast path is off by an ulp here).
    let x = 0.124_911_316_058_364_49_f64;
    let body = one_input("x", json!([1]), "FP64", json!([x]));
    let req = from_json(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(req.inputs[0].data, TensorData::Fp64(vec![x]));
    let text = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP64", "data": [{x:?}]}}]}}"#
    );
    let req = from_json(text.as_bytes()).unwrap();
    assert_eq!(req.inputs[0].data, TensorData::Fp64(vec![x]));
}

mod fuzz {
    //! The stable stand-in for the cargo-fuzz target (`fuzz/`): decoding
    //! arbitrary and mutated bodies never panics, and what decodes re-encodes.
    use mlops_serve::codec;
    use proptest::prelude::*;

    const SEED: &str = r#"{"id":"1","parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;

    fn check(body: &[u8], json_len: Option<usize>) {
        if let Ok(r) = codec::decode_request(body, json_len) {
            let (bytes, len) = codec::encode_request(&r, |_| true).unwrap();
            let back = codec::decode_request(&bytes, len).unwrap();
            assert_eq!(back.inputs.len(), r.inputs.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), len in proptest::option::of(0usize..600)) {
            check(&body, len);
        }

        #[test]
        fn mutated_requests_never_panic(
            flips in proptest::collection::vec((0usize..SEED.len() + 11, any::<u8>()), 1..6),
            extra in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut body = SEED.as_bytes().to_vec();
            body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
            body.extend_from_slice(&extra);
            for (at, byte) in flips {
                let at = at % body.len();
                body[at] = byte;
            }
            check(&body, Some(SEED.len()));
            check(&body, None);
        }

        /// The deferred path (`data` before `datatype`) decodes exactly what the
        /// usual order does, values, errors and all.
        #[test]
        fn data_first_or_last_decode_alike(
            values in proptest::collection::vec(proptest::option::of(-1e6f64..1e6), 0..40),
            datatype in proptest::sample::select(vec!["FP32", "FP64", "INT32", "INT64", "BOOL"]),
            nested in any::<bool>(),
        ) {
            let items: Vec<String> = values
                .iter()
                .map(|v| v.map_or_else(|| "\"x\"".to_owned(), |v| format!("{}", v.trunc())))
                .collect();
            let data = if nested && items.len().is_multiple_of(2) {
                items.chunks(2).map(|c| format!("[{}]", c.join(","))).collect::<Vec<_>>().join(",")
            } else {
                items.join(",")
            };
            let shape = items.len();
            let last = format!(r#"{{"inputs":[{{"name":"t","shape":[{shape}],"datatype":"{datatype}","data":[{data}]}}]}}"#);
            let first = format!(r#"{{"inputs":[{{"data":[{data}],"name":"t","shape":[{shape}],"datatype":"{datatype}"}}]}}"#);
            let a = super::from_json(last.as_bytes()).map_err(|e| e.to_string());
            let b = super::from_json(first.as_bytes()).map_err(|e| e.to_string());
            prop_assert_eq!(a.is_ok(), b.is_ok(), "{:?} vs {:?}", a, b);
            if let (Ok(a), Ok(b)) = (a, b) {
                prop_assert_eq!(a, b);
            }
        }
    }
}

/// `data` before `datatype` is kept as its JSON text until the datatype is known
/// (not as a generic value tree many times its size), then typed exactly as in
/// the usual order, with the same checks.
#[test]
fn data_before_datatype_decodes_as_in_the_usual_order() {
    let usual = from_json(
        br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT64","data":[[1,2],[3,9007199254740993]]}]}"#,
    )
    .unwrap();
    let reordered = from_json(
        br#"{"inputs":[{"data":[[1,2],[3,9007199254740993]],"name":"x","shape":[2,2],"datatype":"INT64"}]}"#,
    )
    .unwrap();
    assert_eq!(usual, reordered);
    // 200,000 floats with data first: decoded, all of them.
    let values: Vec<String> = (0..200_000).map(|i| format!("{i}.5")).collect();
    let body = format!(
        r#"{{"inputs":[{{"data":[{}],"name":"x","shape":[200000],"datatype":"FP64"}}]}}"#,
        values.join(",")
    );
    let r = from_json(body.as_bytes()).unwrap();
    assert_eq!(r.inputs[0].data.len(), 200_000);
    for (bad, needle) in [
        (
            r#"{"inputs":[{"data":[1,"a"],"name":"x","shape":[2],"datatype":"FP32"}]}"#,
            "input 'x': data",
        ),
        (
            r#"{"inputs":[{"data":[1,2,3],"name":"x","shape":[2],"datatype":"FP32"}]}"#,
            "holds 2 elements but data has 3",
        ),
        (
            r#"{"inputs":[{"data":[1],"name":"x","shape":[1],"datatype":"FP99"}]}"#,
            "FP99",
        ),
    ] {
        let err = from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
