// SPDX-License-Identifier: GPL-2.0
/*
 * hello: the example module bundled with kmx. It takes one parameter and says hello when
 * loaded, so a boot-and-load test can see it in the kernel log.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

static char *whom = "world";
module_param(whom, charp, 0444);
MODULE_PARM_DESC(whom, "Who to greet when the module loads");

static int __init hello_init(void)
{
	pr_info("hello: hello, %s (built by kmx)\n", whom);
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("hello: goodbye, %s\n", whom);
}

module_init(hello_init);
module_exit(hello_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmx developers");
MODULE_DESCRIPTION("Example out-of-tree module built by kmx");
MODULE_VERSION("1.0");
