// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The model loader on arbitrary bytes: never panics; whatever it accepts
//! round-trips through `to_bytes` and can run a prediction.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nn_core::Model;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::from_bytes(data) else {
        return;
    };
    let again = Model::from_bytes(&model.to_bytes()).expect("a saved model loads");
    assert_eq!(again.mlp, model.mlp);
    assert_eq!(again.checksum, model.checksum);
    let x = vec![nn_core::fixed::ONE; model.mlp.input_dim()];
    let y = model.mlp.predict(&x).expect("input of the model's width");
    assert_eq!(y.len(), model.mlp.output_dim());
});
