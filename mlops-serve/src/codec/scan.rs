//! A fast path for decoding the common shape of a JSON inference request.
//!
//! Nearly every request a serving endpoint sees is a flat object of plain tensors:
//! `{"id": "1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data":
//! [0.5]}, ...]}`. For those, a scanner that knows the protocol's shape is several
//! times faster than the general serde decoder (no field-name dispatch through
//! visitors, no intermediate values, names and numbers read in one pass).
//!
//! The scanner accepts only a strict subset of what the serde decoder accepts and
//! gives up (returns `None`) on anything else: escapes in strings, parameter
//! values other than booleans, integers and strings, unknown or repeated fields,
//! nested `data`, `data` before `datatype`, datatypes other than `FP32`, `FP64`,
//! `INT32` and `INT64`, and every input the serde decoder would refuse (a value out
//! of range, a shape that does not match, a repeated name). It also reads the JSON
//! part of a body in the binary tensor extension (tensors whose `parameters` give
//! a `binary_data_size` instead of `data`), as Triton's clients send by default.
//! The caller then runs the serde decoder, which handles the general case
//! and words the errors. Whatever the scanner accepts decodes to exactly what the
//! serde decoder gives (a property test checks this): numbers are parsed with the
//! standard library's correctly rounded parser, as serde_json's `float_roundtrip`
//! does, and narrowed the same way.

use mlops_core::inference::{
    Datatype, InferenceRequest, ParameterValue, Parameters, RequestOutput, Shape, Tensor,
    TensorData, check_element_count,
};

use super::meter;
use super::raw::{BINARY_DATA_SIZE, decode_raw};

/// The request, when `body` is in the subset this scanner reads; `None` means
/// "use the general decoder", never "invalid".
pub(super) fn parse_request(body: &[u8]) -> Option<InferenceRequest> {
    // Room for a typical request's inputs up front.
    parse(body, |s| s.array(8, Scanner::tensor))
}

/// The request of a body in the binary tensor extension, `json` being its JSON
/// part and `binary` the bytes after it, when the JSON is in the subset this
/// scanner reads; `None` means "use the general decoder", never "invalid".
pub(super) fn parse_binary_request(json: &[u8], binary: &[u8]) -> Option<InferenceRequest> {
    parse(json, |s| {
        with_binary(s.array(8, Scanner::any_tensor)?, binary)
    })
}

fn parse(
    body: &[u8],
    inputs_of: impl Fn(&mut Scanner<'_>) -> Option<Vec<Tensor>>,
) -> Option<InferenceRequest> {
    let mut s = Scanner { body, at: 0 };
    let mut id = None;
    let mut parameters = None;
    let mut inputs = None;
    let mut outputs = None;
    s.object(|s, key| {
        match key {
            b"id" if id.is_none() => id = Some(s.string()?.to_owned()),
            b"parameters" if parameters.is_none() => parameters = Some(s.parameters()?),
            b"inputs" if inputs.is_none() => inputs = Some(inputs_of(s)?),
            b"outputs" if outputs.is_none() => outputs = Some(s.array(0, Scanner::output)?),
            _ => return None,
        }
        Some(())
    })?;
    s.skip_space();
    if s.at != body.len() {
        return None;
    }
    let request = InferenceRequest {
        id,
        parameters: parameters.unwrap_or_default(),
        inputs: inputs?,
        outputs,
    };
    request.check_unique_names().ok()?;
    Some(request)
}

/// The tensors of a binary-extension request: each one with a
/// `binary_data_size` takes that many bytes of `binary`, in order, and the sizes
/// must account for every byte; the others must have their `data` in the JSON.
fn with_binary(scanned: Vec<Scanned>, binary: &[u8]) -> Option<Vec<Tensor>> {
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(scanned.len());
    for mut t in scanned {
        let size = match (t.binary_size, t.parameters.remove(BINARY_DATA_SIZE)) {
            (Some(size), None) | (None, Some(ParameterValue::Int(size))) => Some(size),
            (None, None) => None,
            _ => return None,
        };
        let data = match size {
            None => t.data?,
            Some(size) if t.data.is_none() => {
                let end = offset.checked_add(usize::try_from(size).ok()?)?;
                let data = decode_raw(&t.name, t.datatype, binary.get(offset..end)?).ok()?;
                offset = end;
                data
            }
            Some(_) => return None,
        };
        out.push(finish(t.name, t.shape, t.parameters, data)?);
    }
    (offset == binary.len()).then_some(out)
}

/// A tensor as read from the JSON, before its data is settled: in a binary
/// request it may be waiting for bytes of the binary part.
struct Scanned {
    name: String,
    shape: Shape,
    datatype: Datatype,
    parameters: Parameters,
    /// `binary_data_size` when it was the only parameter, kept out of the map
    /// (a binary request has one per tensor).
    binary_size: Option<i64>,
    data: Option<TensorData>,
}

impl Scanned {
    /// The tensor of a plain JSON request: its data must be in the JSON, and a
    /// `binary_data_size` is just a parameter.
    fn plain(self) -> Option<Tensor> {
        let mut parameters = self.parameters;
        if let Some(size) = self.binary_size {
            parameters.insert(BINARY_DATA_SIZE.to_owned(), ParameterValue::Int(size));
        }
        finish(self.name, self.shape, parameters, self.data?)
    }
}

/// A JSON number as read: its text, and its decimal parts while they fit the
/// exact path (`digits == u32::MAX` when they do not).
struct Number<'a> {
    text: &'a [u8],
    negative: bool,
    /// The significant digits, without leading zeros.
    mantissa: u64,
    digits: u32,
    /// The power of ten the mantissa is scaled by.
    exponent: i32,
    /// Neither a fraction nor an exponent.
    integer: bool,
}

struct Scanner<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.body.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips whitespace and consumes `byte` when it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        if self.body.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// The bytes of a string without escapes or control characters.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let len = self.body[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        let end = start + len;
        if self.body[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some(&self.body[start..end])
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    /// `[item, ...]`, each item read by `item`, into a vector with room for
    /// `capacity` items.
    fn array<T>(
        &mut self,
        capacity: usize,
        item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.items(Vec::with_capacity(capacity), item)
    }

    /// `[item, ...]`, each item read by `item` and pushed onto `out`.
    fn items<T, C: Extend<T>>(
        &mut self,
        mut out: C,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<C> {
        self.expect(b'[')?;
        if self.eat(b']') {
            return Some(out);
        }
        loop {
            out.extend(std::iter::once(item(self)?));
            if !self.eat(b',') {
                self.expect(b']')?;
                return Some(out);
            }
        }
    }

    /// A JSON number, checked against the JSON grammar.
    fn number(&mut self) -> Option<Number<'a>> {
        self.skip_space();
        let start = self.at;
        let mut n = Number {
            text: &[],
            negative: false,
            mantissa: 0,
            digits: 0,
            exponent: 0,
            integer: true,
        };
        if self.body.get(self.at) == Some(&b'-') {
            self.at += 1;
            n.negative = true;
        }
        match self.body.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.significand(&mut n, false);
            }
            _ => return None,
        }
        if self.body.get(self.at) == Some(&b'.') {
            self.at += 1;
            n.integer = false;
            if !self.significand(&mut n, true) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.body.get(self.at) {
            self.at += 1;
            n.integer = false;
            let negative = match self.body.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let from = self.at;
            let mut e: i32 = 0;
            while let Some(&d) = self.body.get(self.at).filter(|d| d.is_ascii_digit()) {
                // Beyond this the exact path is out of reach anyway.
                e = e
                    .saturating_mul(10)
                    .saturating_add(i32::from(d - b'0'))
                    .min(100_000);
                self.at += 1;
            }
            if self.at == from {
                return None;
            }
            n.exponent += if negative { -e } else { e };
        }
        n.text = &self.body[start..self.at];
        Some(n)
    }

    /// Reads digits into `n`'s mantissa (counting fraction digits into its
    /// exponent when `fraction`); whether there was at least one.
    fn significand(&mut self, n: &mut Number<'_>, fraction: bool) -> bool {
        let from = self.at;
        while let Some(&d) = self.body.get(self.at).filter(|d| d.is_ascii_digit()) {
            self.at += 1;
            if n.mantissa == 0 && d == b'0' {
                // Leading zeros add nothing but scale.
            } else if n.digits < 19 {
                n.mantissa = n.mantissa * 10 + u64::from(d - b'0');
                n.digits += 1;
            } else {
                // Too many digits for the exact path; the text is parsed instead.
                n.digits = u32::MAX;
                continue;
            }
            if fraction {
                n.exponent -= 1;
            }
        }
        if fraction && n.mantissa == 0 {
            // Zeros after the point: the value is zero whatever the scale.
            n.exponent = 0;
        }
        self.at > from
    }

    /// A number as the serde decoder reads it for a float datatype: correctly
    /// rounded to `f64`. (`-0` is `-0.0` in both.)
    fn float(&mut self) -> Option<f64> {
        let n = self.number()?;
        // Clinger's fast path: a mantissa and a power of ten both exact in f64
        // give a correctly rounded result in one operation.
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        let v = if n.digits != u32::MAX
            && n.mantissa <= 1 << 53
            && let Some(&scale) = POW10.get(n.exponent.unsigned_abs() as usize)
        {
            let m = n.mantissa as f64;
            let v = if n.exponent < 0 { m / scale } else { m * scale };
            if n.negative { -v } else { v }
        } else {
            std::str::from_utf8(n.text).ok()?.parse().ok()?
        };
        // serde_json refuses numbers beyond the f64 range.
        v.is_finite().then_some(v)
    }

    /// A plain integer (no fraction, no exponent, not `-0`) that fits in `i64`.
    fn integer(&mut self) -> Option<i64> {
        let n = self.number()?;
        // serde_json reads `-0` as the float -0.0, which integer types refuse.
        if !n.integer || n.digits == u32::MAX || (n.negative && n.mantissa == 0) {
            return None;
        }
        let magnitude = i128::from(n.mantissa);
        i64::try_from(if n.negative { -magnitude } else { magnitude }).ok()
    }

    fn shape(&mut self) -> Option<Shape> {
        self.items(Shape::new(), |s| {
            let d = usize::try_from(s.integer()?).ok()?;
            meter::take("shape", std::mem::size_of::<usize>()).ok()?;
            Some(d)
        })
    }

    fn output(&mut self) -> Option<RequestOutput> {
        let mut name = None;
        let mut parameters = None;
        self.object(|s, key| {
            match key {
                b"name" if name.is_none() => name = Some(s.string()?.to_owned()),
                b"parameters" if parameters.is_none() => parameters = Some(s.parameters()?),
                _ => return None,
            }
            Some(())
        })?;
        let name = name?;
        meter::take("outputs", std::mem::size_of::<RequestOutput>() + name.len()).ok()?;
        Some(RequestOutput {
            name,
            parameters: parameters.unwrap_or_default(),
        })
    }

    /// An object of at least one field: `field` reads each value, after its key
    /// and colon, and refuses (`None`) a key it does not take.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        loop {
            let key = self.raw_string()?;
            self.expect(b':')?;
            field(self, key)?;
            if !self.eat(b',') {
                return self.expect(b'}');
            }
        }
    }

    /// `{"binary_data_size": n}` with an integer `n`, and nothing else.
    fn binary_size_only(&mut self) -> Option<i64> {
        self.expect(b'{')?;
        if self.raw_string()? != BINARY_DATA_SIZE.as_bytes() {
            return None;
        }
        self.expect(b':')?;
        let size = self.integer()?;
        self.expect(b'}')?;
        Some(size)
    }

    /// A parameters object whose values are booleans, integers or strings, each
    /// key once.
    fn parameters(&mut self) -> Option<Parameters> {
        let mut out = Parameters::new();
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(out);
        }
        loop {
            let key = self.string()?.to_owned();
            self.expect(b':')?;
            self.skip_space();
            let value = match self.body.get(self.at)? {
                b't' => self.literal(b"true").map(|()| ParameterValue::Bool(true))?,
                b'f' => self
                    .literal(b"false")
                    .map(|()| ParameterValue::Bool(false))?,
                b'"' => ParameterValue::String(self.string()?.to_owned()),
                _ => ParameterValue::Int(self.integer()?),
            };
            meter::take("parameters", meter::parameter_bytes(&key, &value)).ok()?;
            if out.insert(key, value).is_some() {
                return None;
            }
            if !self.eat(b',') {
                self.expect(b'}')?;
                return Some(out);
            }
        }
    }

    /// `literal` when it comes next, byte for byte (no whitespace skipped).
    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        let found = self.body.get(self.at..)?.starts_with(literal);
        found.then(|| self.at += literal.len())
    }

    fn tensor(&mut self) -> Option<Tensor> {
        let start = self.at;
        if let Some(tensor) = self.compact_tensor() {
            return Some(tensor);
        }
        self.at = start;
        self.any_tensor()?.plain()
    }

    /// A tensor written as clients and our own encoder write one: the fields in
    /// the protocol's order with no whitespace between them, matched as literals
    /// rather than read as keys and dispatched. `None` leaves it to
    /// [`Self::any_tensor`].
    fn compact_tensor(&mut self) -> Option<Tensor> {
        self.skip_space();
        self.literal(b"{\"name\":")?;
        let name = self.string()?.to_owned();
        self.literal(b",\"shape\":")?;
        let shape = self.shape()?;
        self.literal(b",\"datatype\":\"")?;
        let datatype = [
            (&b"FP32\""[..], Datatype::Fp32),
            (b"FP64\"", Datatype::Fp64),
            (b"INT32\"", Datatype::Int32),
            (b"INT64\"", Datatype::Int64),
        ]
        .into_iter()
        .find_map(|(text, datatype)| self.literal(text).map(|()| datatype))?;
        self.literal(b",\"data\":")?;
        let data = self.data(&name, datatype, &shape)?;
        self.literal(b"}")?;
        finish(name, shape, Parameters::new(), data)
    }

    /// A tensor with its fields in any order, whitespace allowed, `data` absent
    /// or after `datatype`.
    fn any_tensor(&mut self) -> Option<Scanned> {
        let mut name = None;
        let mut shape: Option<Shape> = None;
        let mut datatype = None;
        let mut parameters = None;
        let mut binary_size = None;
        let mut data = None;
        self.object(|s, key| {
            match key {
                b"name" if name.is_none() => name = Some(s.string()?.to_owned()),
                b"shape" if shape.is_none() => shape = Some(s.shape()?),
                b"datatype" if datatype.is_none() => {
                    datatype = Some(match s.raw_string()? {
                        b"FP32" => Datatype::Fp32,
                        b"FP64" => Datatype::Fp64,
                        b"INT32" => Datatype::Int32,
                        b"INT64" => Datatype::Int64,
                        _ => return None,
                    });
                }
                b"data" if data.is_none() => {
                    data = Some(s.data(name.as_deref()?, datatype?, shape.as_ref()?)?);
                }
                b"parameters" if parameters.is_none() && binary_size.is_none() => {
                    let at = s.at;
                    match s.binary_size_only() {
                        Some(size) => binary_size = Some(size),
                        None => {
                            s.at = at;
                            parameters = Some(s.parameters()?);
                        }
                    }
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(Scanned {
            name: name?,
            shape: shape?,
            datatype: datatype?,
            parameters: parameters.unwrap_or_default(),
            binary_size,
            data,
        })
    }

    /// A flat array of the `datatype` elements of tensor `name` of `shape`:
    /// exactly as many as the shape holds, counted with the meter before room
    /// is made for them.
    fn data(&mut self, name: &str, datatype: Datatype, shape: &Shape) -> Option<TensorData> {
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        meter::take(
            format_args!("input '{name}'"),
            meter::elements_bytes(datatype, n)?,
        )
        .ok()?;
        let data = match datatype {
            Datatype::Fp32 => TensorData::Fp32(self.bounded(n, |s| {
                let v = s.float()?;
                (v.abs() <= f64::from(f32::MAX)).then_some(v as f32)
            })?),
            Datatype::Fp64 => TensorData::Fp64(self.bounded(n, Scanner::float)?),
            Datatype::Int32 => {
                TensorData::Int32(self.bounded(n, |s| i32::try_from(s.integer()?).ok())?)
            }
            Datatype::Int64 => TensorData::Int64(self.bounded(n, Scanner::integer)?),
            _ => return None,
        };
        (data.len() == n).then_some(data)
    }

    /// `[item, ...]` of at most `n` items (with room for `n`); `None` beyond.
    fn bounded<T>(&mut self, n: usize, item: impl Fn(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut count = 0usize;
        self.array(n, |s| {
            count += 1;
            if count > n { None } else { item(s) }
        })
    }
}

/// The tensor, when its shape holds exactly its elements.
fn finish(name: String, shape: Shape, parameters: Parameters, data: TensorData) -> Option<Tensor> {
    check_element_count(&name, &shape, data.len()).ok()?;
    meter::take(format_args!("input '{name}'"), meter::tensor_bytes(&name)).ok()?;
    Some(Tensor {
        name,
        shape,
        parameters,
        data,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn serde(body: &str) -> std::result::Result<InferenceRequest, String> {
        super::super::json::decode_request(body.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_common_shape() {
        let body = r#" {"id":"7", "inputs": [
            {"name":"a","shape":[2],"datatype":"FP32","data":[0.5,-1e3]},
            {"name":"b","shape":[1,2],"datatype":"INT64","data":[9007199254740993,-4]},
            {"name":"c","shape":[0],"datatype":"FP64","data":[]}
        ], "outputs": [{"name": "y"}]} "#;
        let fast = parse_request(body.as_bytes()).expect("in the subset");
        assert_eq!(Ok(fast), serde(body));
    }

    #[test]
    fn a_tensor_the_literal_path_gives_up_on_half_way_is_read_again_in_full() {
        // Each body starts in the compact form and leaves it at a different
        // field; the general reader then takes the tensor from its start.
        for body in [
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1] }]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype": "INT64","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1] ,"datatype":"FP64","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a", "shape":[1],"datatype":"INT32","data":[1]}]}"#,
            r#"{"inputs":[{"shape":[1],"name":"a","datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1,2]},{"name":"b","datatype":"FP32","shape":[1],"data":[3]}]}"#,
        ] {
            let fast = parse_request(body.as_bytes()).expect(body);
            assert_eq!(Ok(fast), serde(body), "{body}");
        }
    }

    #[test]
    fn reads_parameters_of_the_request_its_tensors_and_outputs() {
        let body = r#"{"id":"1","parameters":{"binary_data_output":false,"priority":3,"tag":"x"},
            "inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{}},
                      {"parameters": {"k": true} , "name":"b","datatype":"INT32","shape":[1],"data":[2]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}},{"parameters":{},"name":"z"}]}"#;
        let fast = parse_request(body.as_bytes()).expect("in the subset");
        assert_eq!(
            fast.parameters.get("priority"),
            Some(&ParameterValue::Int(3))
        );
        assert_eq!(
            fast.inputs[1].parameters.get("k"),
            Some(&ParameterValue::Bool(true))
        );
        assert_eq!(Ok(fast), serde(body));
        // In a plain JSON request a size is just a parameter, kept as given.
        for body in [
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4,"x":"y"},"data":[1]}]}"#,
        ] {
            let fast = parse_request(body.as_bytes()).expect(body);
            assert_eq!(
                fast.inputs[0].parameters.get(BINARY_DATA_SIZE),
                Some(&ParameterValue::Int(4))
            );
            assert_eq!(Ok(fast), serde(body), "{body}");
        }
    }

    /// A binary-extension body: `json` followed by `binary`, split again.
    fn both(
        json: &str,
        binary: &[u8],
    ) -> (Option<InferenceRequest>, Result<InferenceRequest, String>) {
        (
            parse_binary_request(json.as_bytes(), binary),
            super::super::binary::decode_request(json.as_bytes(), binary)
                .map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn reads_the_binary_requests_triton_clients_send() {
        // As tritonclient's HTTP client writes one (Python's json.dumps spacing),
        // with no outputs named: every output is asked for in binary.
        let json = r#"{"inputs": [{"name": "x0", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}, {"name": "n", "shape": [1], "datatype": "INT64", "data": [7]}, {"name": "x1", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}], "parameters": {"binary_data_output": true}}"#;
        let mut binary = Vec::new();
        for v in [0.5f32, -2.0] {
            binary.extend_from_slice(&v.to_le_bytes());
        }
        for v in [3i32, -4] {
            binary.extend_from_slice(&v.to_le_bytes());
        }
        let (fast, general) = both(json, &binary);
        let fast = fast.expect("in the subset");
        assert_eq!(fast.inputs[0].data, TensorData::Fp32(vec![0.5, -2.0]));
        assert_eq!(fast.inputs[2].data, TensorData::Int32(vec![3, -4]));
        assert!(
            fast.inputs[0].parameters.is_empty(),
            "the size describes the wire"
        );
        assert!(super::super::wants_binary(&fast, "anything"));
        assert_eq!(Ok(fast), general);
    }

    #[test]
    fn binary_requests_the_general_decoder_refuses_are_left_to_it() {
        let four = 1.5f32.to_le_bytes();
        for (json, binary) in [
            // Sizes past the end, short of it, negative, not an integer.
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":0}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-4}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4},"parameters":{}}]}"#,
                &four[..],
            ),
            // Both data and a size; neither; a size that is not whole elements.
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#,
                &[][..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":4}}]}"#,
                &four[..],
            ),
            // The shape does not hold the bytes' elements; a repeated name.
            (
                r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                &four[..],
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}},{"name":"a","shape":[0],"datatype":"FP32","data":[]}]}"#,
                &four[..],
            ),
        ] {
            let (fast, general) = both(json, binary);
            assert!(fast.is_none(), "{json}");
            assert!(general.is_err(), "{json}");
        }
    }

    #[test]
    fn leaves_everything_else_to_the_general_decoder() {
        for body in [
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[[1]]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"data":[1],"datatype":"FP32"}]}"#,
            r#"{"inputs":[{"name":"a\n","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"UINT8","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1e39]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[2147483648]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT64","data":[1.0]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT64","data":[-0]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[01]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1.]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[NaN]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"x":1}"#,
            r#"{"inputs":[],"inputs":[]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]},{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":1.5}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":null}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":{}}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":1,"p":2}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":-0}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":"\n"}}]}"#,
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"p":truth}}]}"#,
            r#"{"inputs":[],"outputs":[{"name":"y","x":1}]}"#,
            r#"{"inputs":[],"outputs":[{"parameters":{}}]}"#,
            r#"{"inputs":[],"parameters":[]}"#,
            r#"{"inputs":[]} x"#,
            r#"{"inputs":[],}"#,
            r#"{"id":null,"inputs":[]}"#,
        ] {
            assert!(parse_request(body.as_bytes()).is_none(), "{body}");
        }
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f32>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| v.to_string()),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| format!("{v:e}")),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
        ]
    }

    fn tensor() -> impl Strategy<Value = String> {
        (
            "[a-z]{1,3}",
            prop::sample::select(vec!["FP32", "FP64", "INT32", "INT64"]),
            prop::collection::vec(number(), 0..5),
            0usize..3,
            any::<bool>(),
        )
            .prop_map(|(name, datatype, values, fudge, spaced)| {
                let sep = if spaced { " , " } else { "," };
                // Mostly a matching shape, sometimes not.
                let len = if fudge == 2 {
                    values.len() + 1
                } else {
                    values.len()
                };
                format!(
                    r#"{{"name":"{name}"{sep}"shape":[{len}]{sep}"datatype":"{datatype}"{sep}"data":[{}]}}"#,
                    values.join(sep)
                )
            })
    }

    /// A request of up to four tensors of random datatypes and values.
    fn request() -> impl Strategy<Value = InferenceRequest> {
        let tensor = (
            prop::sample::select(vec![
                Datatype::Fp32,
                Datatype::Fp64,
                Datatype::Int32,
                Datatype::Int64,
            ]),
            prop::collection::vec(-1e6f64..1e6, 0..5),
        );
        prop::collection::vec(tensor, 0..4).prop_map(|tensors| {
            InferenceRequest::new(
                tensors
                    .into_iter()
                    .enumerate()
                    .map(|(i, (datatype, values))| {
                        let n = values.len();
                        let data = match datatype {
                            Datatype::Fp32 => {
                                TensorData::Fp32(values.iter().map(|&v| v as f32).collect())
                            }
                            Datatype::Fp64 => TensorData::Fp64(values),
                            Datatype::Int32 => {
                                TensorData::Int32(values.iter().map(|&v| v as i32).collect())
                            }
                            _ => TensorData::Int64(values.iter().map(|&v| v as i64).collect()),
                        };
                        Tensor::new(format!("t{i}"), vec![n], data).expect("consistent")
                    })
                    .collect(),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn binary_requests_agree_with_the_general_decoder(
            request in request(),
            binary in prop::collection::vec(any::<bool>(), 4),
        ) {
            let (body, json_len) = super::super::encode_request(
                &request,
                |name| binary[name[1..].parse::<usize>().unwrap_or(0) % 4],
            )
            .expect("encodes");
            let (json, bytes) = body.split_at(json_len.unwrap_or(body.len()));
            let general = super::super::binary::decode_request(json, bytes).map_err(|e| e.to_string());
            prop_assert_eq!(&general, &Ok(request.clone()));
            // Our encoder writes keys in alphabetical order: `data` before
            // `datatype` sends a tensor with data in the JSON to the general
            // decoder; a request whose tensors are all binary is read here.
            match parse_binary_request(json, bytes) {
                Some(fast) => prop_assert_eq!(Ok(fast), general),
                None => prop_assert!(
                    request.inputs.iter().any(|t| !binary[t.name[1..].parse::<usize>().unwrap_or(0) % 4]),
                    "an all-binary request was left to the general decoder"
                ),
            }
        }

        #[test]
        fn agrees_with_the_general_decoder(
            tensors in prop::collection::vec(tensor(), 0..4),
            id in prop::option::of("[0-9a-z]{0,4}"),
        ) {
            let id = id.map(|id| format!(r#""id": "{id}", "#)).unwrap_or_default();
            let body = format!(r#"{{{id}"inputs": [{}]}}"#, tensors.join(", "));
            match parse_request(body.as_bytes()) {
                Some(fast) => prop_assert_eq!(Ok(fast), serde(&body)),
                // Every body generated here is in the subset unless serde
                // refuses it too.
                None => prop_assert!(serde(&body).is_err(), "{}", body),
            }
        }
    }
}
