/* Port I/O: console output, a device register read, and a read of a port nothing claims. */
    .include "macros.S"
    .globl _start
    .text
_start:
    PUTS "pio: hello\n"
    /* COM1 line status: transmitter holding register empty (bit 5). */
    mov $0x3fd, %dx
    inb %dx, %al
    test $0x20, %al
    jz 1f
    PUTS "pio: lsr thre\n"
1:  /* A port no device claims reads as all ones. */
    mov $0x1234, %dx
    inl %dx, %eax
    call put_hex_line
    call poweroff

put_hex_line:
    PUTS "pio: unclaimed "
    call put_hex
    PUTS "\n"
    ret

    .include "lib.S"
