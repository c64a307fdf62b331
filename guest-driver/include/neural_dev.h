/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * neural_dev.h - the user-space interface of /dev/neural_network
 * (virtio_nn.ko): binary requests and batches.
 *
 * The definition is nn-core/src/dev_abi.rs (the driver includes that file);
 * this header is its C form, checked against it by nn-core's
 * tests/interfaces.rs (cargo test). All fields are little-endian 32-bit
 * integers; values are Q16.16 (s32: the integer x is x << 16).
 *
 * A write is one request, in one write() call: a struct neural_dev_request
 * followed by num_samples * in_dim input values, row after row. It blocks
 * until the device answers and returns the byte count. A read then returns
 * the answer of the last successful write on the same open file: a struct
 * neural_dev_response followed by num_samples * out_dim output values
 * (partial reads follow the file position; a write resets it to 0).
 *
 * NEURAL_DEV_NULL_MAGIC instead of NEURAL_DEV_REQUEST_MAGIC makes the same
 * round trip without inference (the device reads the inputs and answers with
 * a header only, out_dim 0): for measuring the transport.
 *
 * Errors of a write (nothing changes on error):
 *   EINVAL     shorter than a header, a wrong magic, num_samples 0 or above
 *              the device's max batch, in_dim 0 or not the model's input
 *              width, a length that is not
 *              NEURAL_DEV_REQUEST_LEN(num_samples, in_dim), timeout_ms < 0;
 *   E2BIG      longer than NEURAL_DEV_MAX_WRITE_LEN;
 *   ENODEV     no device bound, or it has no model;
 *   ETIMEDOUT  no answer within the timeout (timeout_ms, or the module
 *              parameter timeout_ms when it is 0);
 *   EINTR      a fatal signal interrupted the wait;
 *   EIO        the device failed, or gave an invalid answer.
 * A read before any successful write on the file fails with ENODATA.
 */
#ifndef NEURAL_DEV_H
#define NEURAL_DEV_H

#include <linux/types.h>

/* The misc device's name: the node is /dev/neural_network. */
#define NEURAL_DEV_NAME "neural_network"

/*
 * The magics: the ASCII bytes "NNRQ", "NNRD", "NNRN", "NNRS" and "NNRF" as
 * a le32. NEURAL_DEV_DEVICE_ONLY_MAGIC is a prediction the driver's CPU
 * fallback must not answer (the device's answer or an error); an answer
 * with NEURAL_DEV_FALLBACK_MAGIC was made by that fallback from the
 * driver's copy of the model (generation: the copy's), because the device
 * could not answer (timeout, no device, no model, device error).
 */
#define NEURAL_DEV_REQUEST_MAGIC	0x51524e4e
#define NEURAL_DEV_DEVICE_ONLY_MAGIC	0x44524e4e
#define NEURAL_DEV_NULL_MAGIC		0x4e524e4e
#define NEURAL_DEV_RESPONSE_MAGIC	0x53524e4e
#define NEURAL_DEV_FALLBACK_MAGIC	0x46524e4e

/* Size of both headers, and the largest write accepted. */
#define NEURAL_DEV_HEADER_LEN		16
#define NEURAL_DEV_MAX_WRITE_LEN	(4 << 20)

/* Length of a whole request (header and inputs), and of a whole answer. */
#define NEURAL_DEV_REQUEST_LEN(num_samples, in_dim) \
	(NEURAL_DEV_HEADER_LEN + 4 * (num_samples) * (in_dim))
#define NEURAL_DEV_RESPONSE_LEN(num_samples, out_dim) \
	(NEURAL_DEV_HEADER_LEN + 4 * (num_samples) * (out_dim))

struct neural_dev_request {
	__le32 magic;		/* NEURAL_DEV_REQUEST_MAGIC, _DEVICE_ONLY_ or _NULL_ */
	__le32 num_samples;	/* 1..max_batch */
	__le32 in_dim;		/* the model's input width */
	__le32 timeout_ms;	/* s32 >= 0; 0: the module parameter */
	__le32 inputs[];	/* num_samples * in_dim Q16.16 values (s32) */
};

struct neural_dev_response {
	__le32 magic;		/* NEURAL_DEV_RESPONSE_MAGIC or _FALLBACK_MAGIC */
	__le32 num_samples;	/* as asked */
	__le32 out_dim;		/* the model's output width (0: null request) */
	__le32 generation;	/* the model generation that answered */
	__le32 outputs[];	/* num_samples * out_dim Q16.16 values (s32) */
};

#endif /* NEURAL_DEV_H */
