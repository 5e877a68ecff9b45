# Shared by the benchmarks: write a generated multi-file module (24 translation units with
# real kernel code in them, plus main.c, Kbuild and dkms.conf) into directory $1.
make_multi_module() {
  local multi="$1" objs="" i
  mkdir -p "$multi"
  for i in $(seq 1 24); do
    objs="$objs part$i.o"
    cat > "$multi/part$i.c" <<C
// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sort.h>
struct item$i { struct list_head node; int key; char name[32]; };
static int cmp$i(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int multi_part$i(int n)
{
	LIST_HEAD(head);
	struct item$i *it, *tmp;
	int keys[64], i, sum = 0;
	for (i = 0; i < 64; i++)
		keys[i] = (i * 2654435761u) % 1000;
	sort(keys, 64, sizeof(int), cmp$i, NULL);
	for (i = 0; i < n && i < 64; i++) {
		it = kzalloc(sizeof(*it), GFP_KERNEL);
		if (!it)
			break;
		it->key = keys[i];
		snprintf(it->name, sizeof(it->name), "item-%d-%d", $i, i);
		list_add_tail(&it->node, &head);
	}
	list_for_each_entry_safe(it, tmp, &head, node) {
		sum += it->key + strlen(it->name);
		list_del(&it->node);
		kfree(it);
	}
	return sum;
}
C
  done
  cat > "$multi/main.c" <<'C'
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
static int __init multi_init(void) { return 0; }
static void __exit multi_exit(void) { }
module_init(multi_init);
module_exit(multi_exit);
MODULE_LICENSE("GPL");
C
  printf 'obj-m := multi.o\nmulti-y := main.o%s\n' "$objs" > "$multi/Kbuild"
  printf 'PACKAGE_NAME="multi"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="multi"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n' > "$multi/dkms.conf"
}
