//! The online store contract, written once for every implementation.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Float64Type};
use mlops_core::Error;
use mlops_core::feature::FeatureView;
use mlops_store::{InMemoryOnlineStore, OnlineStore};

fn view() -> FeatureView {
    FeatureView::builder("merchant")
        .join_key("merchant_id", DataType::Utf8)
        .join_key("country", DataType::Int64)
        .event_time("ts")
        .created_time("created")
        .feature("risk", DataType::Float64)
        .feature("label", DataType::Utf8)
        .build()
        .unwrap()
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn rows(
    ids: Vec<&str>,
    country: Vec<i64>,
    event: Vec<i64>,
    created: Vec<i64>,
    risk: Vec<Option<f64>>,
) -> RecordBatch {
    let n = ids.len();
    RecordBatch::try_from_iter([
        ("merchant_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("country", Arc::new(Int64Array::from(country)) as ArrayRef),
        ("ts", ts(event)),
        ("created", ts(created)),
        ("risk", Arc::new(Float64Array::from(risk)) as ArrayRef),
        (
            "label",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("l{i}")),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

fn keys(ids: Vec<&str>, country: Vec<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("merchant_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("country", Arc::new(Int64Array::from(country)) as ArrayRef),
    ])
    .unwrap()
}

/// What every online store must do.
async fn contract(store: Arc<dyn OnlineStore>) {
    let v = view();
    let written = store
        .write(
            &v,
            &rows(
                vec!["a", "a", "b"],
                vec![1, 2, 1],
                vec![10, 10, 10],
                vec![10, 10, 10],
                vec![Some(0.1), None, Some(0.3)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(written, 3);
    // Older rows never replace newer ones; equal rows change nothing.
    let older = store
        .write(
            &v,
            &rows(vec!["a"], vec![1], vec![5], vec![50], vec![Some(9.0)]),
        )
        .await
        .unwrap();
    assert_eq!(older, 0);
    let same = store
        .write(
            &v,
            &rows(vec!["a"], vec![1], vec![10], vec![10], vec![Some(0.1)]),
        )
        .await
        .unwrap();
    assert_eq!(same, 0, "idempotent");
    // Same event time, later created time: replaces.
    let later = store
        .write(
            &v,
            &rows(vec!["b"], vec![1], vec![10], vec![11], vec![Some(0.35)]),
        )
        .await
        .unwrap();
    assert_eq!(later, 1);

    let read = store
        .read(
            &v,
            &keys(vec!["b", "zz", "a", "a", "b"], vec![1, 1, 2, 1, 1]),
            &["risk".into()],
        )
        .await
        .unwrap();
    assert_eq!(read.rows.len(), 5);
    assert!(read.rows[1].is_none(), "unknown key");
    let risk = read.values.column(0).as_primitive::<Float64Type>();
    let value = |i: usize| {
        read.rows[i]
            .as_ref()
            .map(|r| risk.is_valid(r.row).then(|| risk.value(r.row)))
    };
    assert_eq!(value(0), Some(Some(0.35)));
    assert_eq!(value(2), Some(None), "a stored null stays null");
    assert_eq!(value(3), Some(Some(0.1)));
    assert_eq!(
        value(4),
        Some(Some(0.35)),
        "duplicate keys each get their answer"
    );
    assert_eq!(read.rows[0].as_ref().unwrap().created_us, Some(11));
    assert_eq!(read.values.num_columns(), 1);

    // Bad input names what is wrong.
    let err = store
        .read(&v, &keys(vec!["a"], vec![1]), &["nope".into()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("feature not found: merchant:nope"),
        "{err}"
    );
    let err = store
        .read(
            &v,
            &keys(vec!["a"], vec![1]).project(&[0]).unwrap(),
            &["risk".into()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SchemaMismatch { .. }) && err.to_string().contains("column 'country'"),
        "{err}"
    );
    let wrong = RecordBatch::try_from_iter([
        (
            "merchant_id",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let err = store.read(&v, &wrong, &["risk".into()]).await.unwrap_err();
    assert!(
        err.to_string().contains("expected Int64, found Utf8"),
        "{err}"
    );
    let null_keys = RecordBatch::try_from_iter([
        (
            "merchant_id",
            Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
        ),
        ("country", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
    ])
    .unwrap();
    assert!(
        store
            .read(&v, &null_keys, &["risk".into()])
            .await
            .unwrap_err()
            .to_string()
            .contains("null")
    );
    let bad_write = rows(vec!["c"], vec![1], vec![1], vec![1], vec![Some(1.0)])
        .project(&[0, 1, 3, 4, 5])
        .unwrap();
    let err = store.write(&v, &bad_write).await.unwrap_err();
    assert!(err.to_string().contains("column 'ts'"), "{err}");

    // A changed feature list starts afresh (materialize again).
    let mut changed = view();
    changed
        .features
        .push(mlops_core::feature::FeatureField::new(
            "extra",
            DataType::Int64,
        ));
    let read = store
        .read(&changed, &keys(vec!["a"], vec![1]), &["risk".into()])
        .await
        .unwrap();
    assert!(read.rows[0].is_none());
}

#[tokio::test]
async fn in_memory_store_keeps_the_contract() {
    contract(Arc::new(InMemoryOnlineStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_the_newest_row() {
    let store = Arc::new(InMemoryOnlineStore::new());
    let v = view();
    let mut handles = Vec::new();
    for w in 0..8i64 {
        let (store, v) = (store.clone(), v.clone());
        handles.push(tokio::spawn(async move {
            for t in 0..50i64 {
                let ids: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
                let event = t * 8 + w;
                let b = rows(
                    ids.iter().map(String::as_str).collect(),
                    vec![1; 20],
                    vec![event; 20],
                    vec![event; 20],
                    vec![Some(event as f64); 20],
                );
                store.write(&v, &b).await.unwrap();
                let _ = store
                    .read(&v, &keys(vec!["m0"], vec![1]), &["risk".into()])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let ids: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
    let read = store
        .read(
            &v,
            &keys(ids.iter().map(String::as_str).collect(), vec![1; 20]),
            &["risk".into()],
        )
        .await
        .unwrap();
    let risk = read.values.column(0).as_primitive::<Float64Type>();
    for r in &read.rows {
        assert_eq!(risk.value(r.as_ref().unwrap().row), (49 * 8 + 7) as f64);
    }
}
