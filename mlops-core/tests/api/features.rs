//! Feature views and feature references: definitions, parsing and bad input.

use std::time::Duration;

use arrow_schema::DataType;
use mlops_core::feature::{Entity, FeatureRef, FeatureView};

fn view() -> mlops_core::feature::FeatureViewBuilder {
    FeatureView::builder("card_stats")
        .join_key("card_id", DataType::Utf8)
        .join_key("merchant_id", DataType::Int64)
        .event_time("event_ts")
        .created_time("created_ts")
        .ttl(Duration::from_secs(3600))
        .feature("amount_avg", DataType::Float64)
        .feature("count", DataType::Int64)
}

#[test]
fn feature_refs_parse_and_print() {
    let r: FeatureRef = "card_stats:amount_avg".parse().unwrap();
    assert_eq!(r.view(), "card_stats");
    assert_eq!(r.feature(), "amount_avg");
    assert_eq!(r.to_string(), "card_stats:amount_avg");
    assert_eq!(r.column_name(false), "amount_avg");
    assert_eq!(r.column_name(true), "card_stats__amount_avg");
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        "\"card_stats:amount_avg\""
    );
    let back: FeatureRef = serde_json::from_str("\"card_stats:amount_avg\"").unwrap();
    assert_eq!(back, r);
}

#[test]
fn bad_feature_refs_say_what_is_wrong() {
    let cases = [
        ("", "no ':'"),
        ("card_stats", "no ':'"),
        (":amount", "the view name is empty"),
        ("card_stats:", "the feature name is empty"),
        ("a:b:c", "more than one ':'"),
        ("card stats:amount", "character ' ' is not allowed"),
        ("../etc:passwd", "may not start with '.'"),
        ("v:f\u{e9}", "is not allowed"),
    ];
    for (input, expected) in cases {
        let err = input.parse::<FeatureRef>().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, mlops_core::Error::InvalidInput { .. }),
            "{input}: {err:?}"
        );
        assert!(
            msg.contains(&format!("feature reference \"{input}\"")),
            "{input}: {msg}"
        );
        assert!(msg.contains(expected), "{input}: {msg}");
    }
    let long = format!("v:{}", "f".repeat(200));
    assert!(
        long.parse::<FeatureRef>()
            .unwrap_err()
            .to_string()
            .contains("limit is 128")
    );
    assert!(serde_json::from_str::<FeatureRef>("\"nocolon\"").is_err());
}

#[test]
fn views_build_validate_and_round_trip_as_json() {
    let v = view()
        .owner("risk-team")
        .tag("tier", "gold")
        .build()
        .unwrap();
    let schema = v.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "card_id",
            "merchant_id",
            "event_ts",
            "created_ts",
            "amount_avg",
            "count"
        ]
    );
    assert!(!schema.field(0).is_nullable());
    assert!(schema.field(4).is_nullable());
    assert_eq!(v.feature_refs()[1].to_string(), "card_stats:count");
    let json = serde_json::to_string_pretty(&v).unwrap();
    let back: FeatureView = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
}

#[test]
fn invalid_views_are_refused_with_the_reason() {
    let no_key = FeatureView::builder("v")
        .event_time("ts")
        .feature("f", DataType::Float64)
        .build();
    assert!(
        no_key
            .unwrap_err()
            .to_string()
            .contains("it has no join key")
    );
    let no_feature = FeatureView::builder("v")
        .join_key("k", DataType::Int64)
        .event_time("ts")
        .build();
    assert!(
        no_feature
            .unwrap_err()
            .to_string()
            .contains("it has no feature")
    );
    let no_time = FeatureView::builder("v")
        .join_key("k", DataType::Int64)
        .feature("f", DataType::Float64)
        .build();
    assert!(
        no_time
            .unwrap_err()
            .to_string()
            .contains("no event-time column")
    );
    let dup = view().feature("card_id", DataType::Float64).build();
    assert!(
        dup.unwrap_err()
            .to_string()
            .contains("column 'card_id' is named more than once")
    );
    let float_key = FeatureView::builder("v")
        .join_key("k", DataType::Float64)
        .event_time("ts")
        .feature("f", DataType::Float64)
        .build();
    assert!(
        float_key
            .unwrap_err()
            .to_string()
            .contains("join key 'k' has type Float64")
    );
    let zero_ttl = view().ttl(Duration::ZERO).build();
    assert!(zero_ttl.unwrap_err().to_string().contains("TTL of zero"));
    let bad_name = FeatureView::builder("my view")
        .join_key("k", DataType::Int64)
        .event_time("ts")
        .feature("f", DataType::Float64)
        .build();
    assert!(
        bad_name
            .unwrap_err()
            .to_string()
            .contains("feature view name \"my view\"")
    );
    let bad_type = view()
        .feature("m", DataType::Struct(Default::default()))
        .build();
    assert!(
        bad_type
            .unwrap_err()
            .to_string()
            .contains("feature 'm' has unsupported type")
    );
}

#[test]
fn entities_validate() {
    assert!(
        Entity::new("card", "card_id", DataType::Utf8)
            .validate()
            .is_ok()
    );
    let err = Entity::new("card", "card_id", DataType::Boolean)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("entity card"), "{err}");
}
