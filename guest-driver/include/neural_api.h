/* SPDX-License-Identifier: GPL-2.0 */
/*
 * neural_api.h - the kernel API of virtio_nn.ko for other kernel modules.
 *
 * All values are Q16.16 fixed point (s32: the integer x is x << 16), as on
 * the device. The functions sleep: call them from process context only,
 * without spinlocks held. They may be called concurrently from any number of
 * threads; each call is one request to the device (on the request queue of
 * the calling CPU).
 *
 * Return values: 0 on success (the outputs are written), or a negative
 * errno, in which case the output buffer is left untouched:
 *   -EINVAL     NULL pointers, a size that does not match the current model
 *               (see neural_api_get_info), num_samples 0 or above the
 *               device's max batch, timeout_ms < 0, or a request the device
 *               calls malformed;
 *   -ENODEV     no device bound, or the device has no model, or it was
 *               removed while the request was in flight;
 *   -ETIMEDOUT  no answer within the timeout; the late answer is dropped by
 *               the driver (it never touches the caller's buffers once the
 *               call has returned);
 *   -EINTR      a fatal signal interrupted the wait;
 *   -EIO        the device failed, or gave an invalid answer;
 *   -ENOMEM.
 *
 * Link against virtio_nn's Module.symvers (KBUILD_EXTRA_SYMBOLS); the
 * symbols are EXPORT_SYMBOL_GPL.
 */
#ifndef NEURAL_API_H
#define NEURAL_API_H

#include <linux/types.h>

#define NEURAL_FRAC_BITS 16
#define INT_TO_FIXED(x) ((s32)((x) * (1 << NEURAL_FRAC_BITS)))
#define FIXED_TO_INT(x) ((s32)(x) >> NEURAL_FRAC_BITS)

/* One sample (the seed's interface). */
struct neural_prediction_request {
	s32 *input_data;	/* input_size values */
	s32 *output_data;	/* room for output_size values */
	int input_size;		/* must equal the model's input width */
	int output_size;	/* must equal the model's output width */
	int timeout_ms;		/* 0: the module parameter timeout_ms */
};

/* Many samples in one device request (the device's batch format). */
struct neural_batch_request {
	const s32 *input_data;	/* num_samples rows of input_size values */
	s32 *output_data;	/* room for num_samples rows of output_size */
	u32 num_samples;	/* 1..max_batch */
	u32 input_size;
	u32 output_size;
	int timeout_ms;		/* 0: the module parameter timeout_ms */
};

/* The current model (it may change at any time: hot-swap). */
struct neural_model_info {
	u32 input_size;
	u32 output_size;
	u32 max_batch;
	u32 generation;
};

/*
 * Many samples, with flags (neural_api_predict_ex). The other calls let the
 * driver's CPU fallback answer when the device cannot (timeout, no device
 * or model, a device error): it runs the same arithmetic on the driver's
 * copy of the model, so the bits are the device's. This one says whether it
 * did and which model generation answered, and can refuse it.
 */
#define NEURAL_API_NO_FALLBACK		(1U << 0) /* flags: device's answer or error */
#define NEURAL_API_ANSWER_FALLBACK	(1U << 0) /* answer_flags: the fallback answered */

struct neural_predict_ex {
	const s32 *input_data;	/* num_samples rows of input_size values */
	s32 *output_data;	/* room for num_samples rows of output_size */
	u32 num_samples;	/* 1..max_batch */
	u32 input_size;
	u32 output_size;
	int timeout_ms;		/* 0: the module parameter timeout_ms */
	u32 flags;		/* in: NEURAL_API_NO_FALLBACK, other bits 0 */
	u32 answer_flags;	/* out: NEURAL_API_ANSWER_FALLBACK */
	u32 generation;		/* out: the model generation that answered */
};

int neural_api_predict(struct neural_prediction_request *request);
/* -EINVAL also for unknown bits in flags. */
int neural_api_predict_ex(struct neural_predict_ex *request);
int neural_api_predict_batch(struct neural_batch_request *request);
/* One sample with the module parameter timeout_ms. */
int neural_predict_production(s32 *input, s32 *output, int input_size,
			      int output_size);
int neural_api_get_info(struct neural_model_info *info);
/*
 * The null request: the round trip of a batch request (input_data,
 * num_samples, input_size, timeout_ms as for neural_api_predict_batch)
 * without inference; the device reads the inputs and answers with a header
 * only. output_data and output_size are not used. For measuring the
 * transport; not counted in /sys/kernel/neural_network/performance.
 */
int neural_api_null(const struct neural_batch_request *request);

#endif /* NEURAL_API_H */
