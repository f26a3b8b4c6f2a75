"""The app's words in English and Simplified Chinese; the language comes from the hub's preferences."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = {"en": "English", "zh-CN": "简体中文"}

_ZH = {
    "Bill Pay": "生活缴费",
    "Skip to content": "跳到正文",
    "Home": "首页",
    "Bills": "缴费",
    "History": "账单记录",
    "Balance": "余额",
    "Reminders": "提醒",
    "Notifications": "通知",
    "Preferences": "偏好设置",
    "Sign out": "退出",
    "Sign in": "登录",
    "Sign up": "注册",
    "Username": "用户名",
    "Password": "密码",
    "Mobile phone": "手机号",
    "E-mail (optional)": "电子邮箱（可选）",  # noqa: RUF001 (Chinese punctuation)
    "Authenticator code": "验证器代码",
    "Verify": "验证",
    "Set up two-factor sign-in": "设置两步验证",
    "Available balance": "可用余额",
    "Pending": "处理中",
    "Upcoming bills": "待缴账单",
    "Recent payments": "最近付款",
    "Pay a bill": "缴费",
    "Biller": "缴费单位",
    "Account number": "户号",
    "Fetch bill": "查询账单",
    "Phone top-up": "话费充值",
    "Phone number": "手机号码",
    "Saved bill accounts": "常用户号",
    "Amount": "金额",
    "Due date": "到期日",
    "Account holder": "户名",
    "Payment method": "支付方式",
    "Saved card": "已保存的银行卡",
    "New card": "新银行卡",
    "E-wallet": "电子钱包",
    "Continue": "继续",
    "Check and confirm": "核对并确认",
    "Pay now": "立即支付",
    "Cancel": "取消",
    "Enter the code we sent": "输入我们发送的验证码",
    "One-time code": "一次性验证码",
    "Confirm": "确认",
    "Payment": "付款",
    "Status": "状态",
    "Date": "日期",
    "Type": "类型",
    "Filter": "筛选",
    "From": "从",
    "To": "到",
    "Any": "全部",
    "Next page": "下一页",
    "First page": "第一页",
    "Top up": "充值",
    "Bank transfer": "银行转账",
    "Statement": "账单明细",
    "Bill due reminder": "账单到期提醒",
    "Low-balance alert": "余额不足提醒",
    "Threshold": "阈值",
    "Delete": "删除",
    "Add": "添加",
    "Theme": "主题",
    "Light": "浅色",
    "Dark": "深色",
    "System": "跟随系统",
    "Text size": "字号",
    "Language": "语言",
    "Channels": "通知渠道",
    "Quiet hours": "免打扰时段",
    "Save": "保存",
    "Saved.": "已保存。",
    "No notifications yet.": "暂无通知。",
    "No payments yet.": "暂无付款。",
}


def translator(lang: str) -> Callable[[str], str]:
    table = _ZH if lang.lower().startswith("zh") else {}

    def t(text: str) -> str:
        return table.get(text, text)

    return t


def html_lang(locale: str) -> str:
    return "zh-CN" if locale.lower().startswith("zh") else "en"
