// SPDX-License-Identifier: GPL-2.0
/*
 * virtio-nn guest driver: the C glue.
 *
 * Everything here is what Rust cannot express in a Linux 6.12 out-of-tree
 * module: static tables that the kernel keeps pointers to (the virtio id
 * table and driver, the proc_ops, the sysfs attribute, the module
 * parameter) and wrappers around static inline functions and macros. All
 * logic lives in the Rust crate (virtio_nn_main.rs and its submodules); the
 * callbacks named here are defined there with #[no_mangle].
 *
 * The Rust declarations of these functions are in glue.rs; keep the two in
 * sync.
 */

#include <linux/completion.h>
#include <linux/err.h>
#include <linux/jiffies.h>
#include <linux/kobject.h>
#include <linux/mod_devicetable.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pid.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "virtio_nn_glue.h"

/* Must equal protocol::VIRTIO_ID_NN (nn-core/src/protocol.rs). */
#define VIRTIO_ID_NN 38

/* --- Module parameter -------------------------------------------------- */

static unsigned int timeout_ms = 5000;
module_param(timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "How long a prediction waits for the device, in ms (0: no limit)");

/* The prediction timeout in jiffies; MAX_SCHEDULE_TIMEOUT for no limit. */
long virtio_nn_timeout_jiffies(void)
{
	unsigned int ms = READ_ONCE(timeout_ms);

	if (!ms)
		return MAX_SCHEDULE_TIMEOUT;
	return min_t(unsigned long, msecs_to_jiffies(ms), MAX_SCHEDULE_TIMEOUT);
}

/* --- virtio driver ----------------------------------------------------- */

static const struct virtio_device_id virtio_nn_id_table[] = {
	{ VIRTIO_ID_NN, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, virtio_nn_id_table);

static const unsigned int virtio_nn_features[] = {
	VIRTIO_F_VERSION_1,
};

static struct virtio_driver virtio_nn_driver = {
	.driver.name = KBUILD_MODNAME,
	.id_table = virtio_nn_id_table,
	.feature_table = virtio_nn_features,
	.feature_table_size = ARRAY_SIZE(virtio_nn_features),
	.probe = virtio_nn_probe,
	.remove = virtio_nn_remove,
	.config_changed = virtio_nn_config_changed,
};

int virtio_nn_register_driver(void)
{
	return register_virtio_driver(&virtio_nn_driver);
}

void virtio_nn_unregister_driver(void)
{
	unregister_virtio_driver(&virtio_nn_driver);
}

/* --- static inline virtio helpers ------------------------------------- */

u32 virtio_nn_cread32(struct virtio_device *vdev, unsigned int offset)
{
	return virtio_cread32(vdev, offset);
}

bool virtio_nn_has_feature(const struct virtio_device *vdev, unsigned int fbit)
{
	return virtio_has_feature(vdev, fbit);
}

int virtio_nn_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
		       struct virtqueue *vqs[],
		       struct virtqueue_info vqs_info[])
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, NULL);
}

void virtio_nn_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

void virtio_nn_del_vqs(struct virtio_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

/* --- other static inline helpers --------------------------------------- */

void virtio_nn_init_completion(struct completion *x)
{
	init_completion(x);
}

unsigned long virtio_nn_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void virtio_nn_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

/* Global number of the session of the calling task. */
int virtio_nn_current_session(void)
{
	return pid_nr(task_session(current));
}

/* --- /proc/neural_network/{predict,predict_q16} ------------------------ */

void *virtio_nn_pde_data(const struct inode *inode)
{
	return pde_data(inode);
}

const struct proc_ops virtio_nn_proc_ops = {
	.proc_open = virtio_nn_proc_open,
	.proc_read = virtio_nn_proc_read,
	.proc_write = virtio_nn_proc_write,
	.proc_lseek = default_llseek,
	.proc_release = virtio_nn_proc_release,
};

/* --- /sys/kernel/neural_network/model_info ----------------------------- */

static ssize_t model_info_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return virtio_nn_model_info_show(buf);
}

static struct kobj_attribute virtio_nn_model_info_attr = __ATTR_RO(model_info);

/* Adds model_info to @kobj (sysfs_create_file is inline). */
int virtio_nn_sysfs_create_file(struct kobject *kobj)
{
	return sysfs_create_file(kobj, &virtio_nn_model_info_attr.attr);
}

void virtio_nn_sysfs_remove_file(struct kobject *kobj)
{
	sysfs_remove_file(kobj, &virtio_nn_model_info_attr.attr);
}
