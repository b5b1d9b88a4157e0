/*
 * The small instance guest: the image vireod registers at set-up so that the control plane can
 * launch real VMs on a host whose KVM cannot run a stock Linux kernel (KVM-PVM, see
 * shared/LAB-FINDINGS.md). It shows what reached it and then idles with its vCPU halted:
 *   VIREO-TESTGUEST ready cmdline=<kernel command line>
 *   user-data: <bytes of the boot module>      (vireod passes UserData as the boot module of a
 *                                               kernel image without an initrd)
 * User data starting with "poweroff" powers the VM off (the instance becomes stopped), "reboot"
 * resets it through the ACPI reset register (the instance stays running), "fault" triple-faults.
 */
    .include "macros.S"
    .globl _start
    .text
    .set ZERO_PAGE, 0x7000
    .set MAX_USER_DATA, 65536
_start:
    PUTS "VIREO-TESTGUEST ready cmdline="
    mov $0x20000, %esi
    call puts
    PUTS "\n"
    mov $ZERO_PAGE, %ebx
    mov 0x218(%rbx), %r12d          /* boot_params.hdr.ramdisk_image */
    mov 0x21c(%rbx), %r13d          /* boot_params.hdr.ramdisk_size */
    test %r13d, %r13d
    jz idle
    cmp $MAX_USER_DATA, %r13d
    jbe 1f
    mov $MAX_USER_DATA, %r13d
1:  PUTS "user-data: "
    mov %r12, %rsi
    mov %r13d, %ecx
    mov $0x3f8, %dx
    rep outsb
    PUTS "\n"
    mov %r12, %rsi
    cmp $8, %r13d
    jb 2f
    mov (%rsi), %rax
    movabs $0x66666f7265776f70, %rcx /* "poweroff" */
    cmp %rcx, %rax
    je off
2:  cmp $6, %r13d
    jb 3f
    mov (%rsi), %eax
    movzwl 4(%rsi), %ecx
    cmp $0x6f626572, %eax           /* "rebo" */
    jne 3f
    cmp $0x746f, %ecx               /* "ot" */
    je reset
3:  cmp $5, %r13d
    jb idle
    mov (%rsi), %eax
    movzbl 4(%rsi), %ecx
    cmp $0x6c756166, %eax           /* "faul" */
    jne idle
    cmp $'t', %ecx
    jne idle
    PUTS "VIREO-TESTGUEST triple fault\n"
    lidt null_idt(%rip)
    ud2
off:
    PUTS "VIREO-TESTGUEST powering off\n"
    call poweroff
reset:
    PUTS "VIREO-TESTGUEST rebooting\n"
    mov $0x602, %dx
    mov $1, %al
    outb %al, %dx
    jmp halt_forever
idle:
    PUTS "VIREO-TESTGUEST idle\n"
    cli
    jmp halt_forever

    .balign 16
null_idt:
    .word 0
    .quad 0

    .include "lib.S"
