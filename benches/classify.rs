//! Criterion benchmarks for `classify`: a pgbench point select and an analytic query.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pgmeridian::classify::{classify, Class, WriteFunctions};

const POINT_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

const ANALYTIC: &str = r#"/* monthly revenue report */
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.created_at, o.total -- net of tax
    FROM orders o
    WHERE o.created_at >= now() - interval '90 days'
      AND o.status <> 'cancelled; for update'
), ranked AS (
    SELECT r.*,
           row_number() OVER (PARTITION BY r.customer_id ORDER BY r.created_at DESC) AS rn,
           sum(r.total) OVER (PARTITION BY r.customer_id) AS customer_total
    FROM recent_orders r
)
SELECT c.name AS "Customer Name",
       date_trunc('month', k.created_at) AS month,
       k.customer_total::numeric(12, 2),
       coalesce(s.segment, E'unknown \'segment\'') AS segment
FROM ranked k
JOIN customers c ON c.id = k.customer_id
LEFT JOIN segments s USING (customer_id)
WHERE k.rn = 1 /* latest order only */
ORDER BY k.customer_total DESC
LIMIT 100"#;

fn bench(c: &mut Criterion) {
    let wf = WriteFunctions::new(["billing.bump_counter"]);
    assert_eq!(classify(POINT_SELECT, &wf).class, Class::Read);
    assert_eq!(classify(ANALYTIC, &wf).class, Class::Read);
    c.bench_function("point_select", |b| {
        b.iter(|| classify(black_box(POINT_SELECT), black_box(&wf)))
    });
    c.bench_function("analytic_cte_window", |b| {
        b.iter(|| classify(black_box(ANALYTIC), black_box(&wf)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
