//! Unit tests of the simulator.

use super::*;

#[test]
fn answers_quote_the_best_matching_context_sentence() {
    let messages = vec![
        json!({"role": "system", "content": "Context:\nThe office opens at 9am. Parking is free on weekends. Lunch is served at noon."}),
        json!({"role": "user", "content": "When is parking free?"}),
    ];
    assert_eq!(
        grounded_answer(&messages),
        "According to the knowledge base: Parking is free on weekends."
    );
    let none = vec![json!({"role": "user", "content": "Hello there"})];
    assert!(grounded_answer(&none).starts_with("I could not find"));
}

#[test]
fn embeddings_are_deterministic_and_normalised() {
    let a = embed("refund policy for orders");
    assert_eq!(a, embed("refund policy for orders"));
    let norm: f32 = a.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    let near: f32 = a
        .iter()
        .zip(embed("orders refund policy"))
        .map(|(x, y)| x * y)
        .sum();
    let far: f32 = a
        .iter()
        .zip(embed("weather tomorrow sunny"))
        .map(|(x, y)| x * y)
        .sum();
    assert!(near > far);
}
